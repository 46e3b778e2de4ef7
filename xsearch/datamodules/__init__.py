"""Datasets: parsers registered by name, synthetic generators, and the shared datamodule."""
from xsearch.datamodules import cuhk_pedes  # noqa: F401  (registers cuhk_pedes, synth_pedes)
from xsearch.datamodules.base import GALLERY, QUERIES, SYNTHESIZERS, RetrievalDataModule
from xsearch.datamodules.records import CaptionRecord, DatasetIndex, ImageRecord

__all__ = ["GALLERY", "QUERIES", "SYNTHESIZERS", "RetrievalDataModule", "CaptionRecord", "DatasetIndex", "ImageRecord"]
