"""The synthetic datasets: drawn pedestrians, faces and scenes, written in the official layouts the parsers read.

The embedded default data of xsearch: every experiment, test and the README quickstart can run without downloading
anything. ``xsearch.datamodules`` registers the three generators as ``SYNTHESIZERS`` (``synth_pedes``, ``synth_faces``,
``synth_pfs``); the command line is ``xsearch data synth {pedes,faces,pfs} --out DIR`` or
``python -m xsearch.synth {pedes,faces,pfs} OUT``.

* :func:`generate_pedes`: the CUHK-PEDES layout (drawn pedestrians, two captions per image);
* :func:`generate_faces`: the CelebA layout with Multi-Modal-CelebA-HQ captions;
* :func:`generate_pfs`: the COCO-PFS layout (COCO-like scenes with one named person and a face descriptor).

Every generator is deterministic (same arguments -> same bytes) and writes atomically (into a temporary sibling
folder, renamed at the end). The modules, by what they make:

* :mod:`~xsearch.synth.writing`: the three generators, their file layouts, atomic folders;
* :mod:`~xsearch.synth.pedestrians`: who a pedestrian is (latent attributes), :mod:`~xsearch.synth.captions`: what
  its captions say, :mod:`~xsearch.synth.render`: how it is drawn (and the backdrops and camera look of every photo);
* :mod:`~xsearch.synth.faces`: face identities, their photos' attributes, the face drawing;
* :mod:`~xsearch.synth.scenes`: COCO-like scenes, their captions, named identities and face descriptors;
* :mod:`~xsearch.synth.colours`, :mod:`~xsearch.synth.sampling`: palettes, seeded streams, the identity split.

This package imports nothing from the parsers (``xsearch.datamodules``), which sit above it; the captions of faces
come from the leaf :mod:`xsearch.face_captions`, shared with the ``celeba`` parser.
"""
from xsearch.synth.captions import COLOUR_WORDS, caption_colour_words, pedes_captions, tokenize
from xsearch.synth.colours import COLOURS, HAIR_COLOURS
from xsearch.synth.faces import face_attributes
from xsearch.synth.pedestrians import PersonAttributes, pedes_attributes, person_colour_words
from xsearch.synth.sampling import split_counts
from xsearch.synth.writing import PEDES_SOURCES, generate_faces, generate_pedes, generate_pfs

__all__ = [
    "COLOURS", "COLOUR_WORDS", "HAIR_COLOURS", "PEDES_SOURCES", "PersonAttributes", "caption_colour_words",
    "face_attributes", "generate_faces", "generate_pedes", "generate_pfs", "pedes_attributes", "pedes_captions",
    "person_colour_words", "split_counts", "tokenize",
]
