"""Datasets: parsers registered by name, synthetic generators, and the shared datamodule."""
from xsearch.datamodules import cuhk_pedes  # noqa: F401  (registers cuhk_pedes, synth_pedes)
from xsearch.datamodules.base import GALLERY, QUERIES, SYNTHESIZERS, RetrievalDataModule
from xsearch.datamodules.records import CaptionRecord, DatasetIndex, ImageRecord
from xsearch.datamodules.synthetic import generate_faces, generate_pedes

SYNTHESIZERS.register("synth_pedes")(generate_pedes)
SYNTHESIZERS.register("synth_faces")(generate_faces)

__all__ = [
    "GALLERY", "QUERIES", "SYNTHESIZERS", "RetrievalDataModule", "CaptionRecord", "DatasetIndex", "ImageRecord",
    "generate_faces", "generate_pedes",
]
