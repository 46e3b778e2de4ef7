"""Datasets: parsers registered by name, the synthetic generators (:mod:`xsearch.synth`) registered by name, and the
shared datamodule.

Every module of this package is imported here, so a parser registers itself (``@DATASETS.register``)
just by living in ``xsearch/datamodules/``.
"""
import importlib
import pkgutil

from xsearch.datamodules.base import FACES, GALLERY, QUERIES, SYNTHESIZERS, RetrievalDataModule
from xsearch.datamodules.face_pairs import VerificationOptions
from xsearch.datamodules.files import DatasetFormatError
from xsearch.datamodules.loading import load_dataset
from xsearch.datamodules.records import CaptionRecord, DatasetIndex, ImageRecord
from xsearch.synth import generate_faces, generate_pedes, generate_pfs

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

SYNTHESIZERS.register("synth_pedes")(generate_pedes)
SYNTHESIZERS.register("synth_faces")(generate_faces)
SYNTHESIZERS.register("synth_pfs")(generate_pfs)

__all__ = [
    "FACES", "GALLERY", "QUERIES", "SYNTHESIZERS", "RetrievalDataModule", "CaptionRecord", "DatasetFormatError",
    "DatasetIndex", "ImageRecord", "VerificationOptions", "generate_faces", "generate_pedes", "load_dataset",
]
