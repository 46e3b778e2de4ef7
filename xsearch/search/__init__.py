"""Search your own images with a trained method: index a folder, query it with text (or reference image + text),
export embeddings.

- :mod:`~xsearch.search.model_io`: rebuild a method and its preprocessing from a checkpoint; embed images / queries.
- :mod:`~xsearch.search.images`: list the images of a folder and embed them, skipping unreadable files.
- :mod:`~xsearch.search.index`: build, update and load an index folder (FAISS, or exact through a method's similarity).
- :mod:`~xsearch.search.query`: rank an index's images for a query.
- :mod:`~xsearch.search.picture`: draw the ranked results.
- :mod:`~xsearch.search.encode`: write embeddings with their ids (safetensors / parquet; ``xsearch encode``).
- :mod:`~xsearch.search.serve`: the search web page over an index (``xsearch serve``; extra ``serve``).
"""
from xsearch.search.index import BuildReport, SearchIndex, build_index, load_index
from xsearch.search.model_io import LoadedModel, load_model
from xsearch.search.query import Hit, Searcher, SearchResult, search

__all__ = ["BuildReport", "Hit", "LoadedModel", "SearchIndex", "SearchResult", "Searcher", "build_index", "load_index",
           "load_model", "search"]
