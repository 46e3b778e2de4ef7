"""xsearch: cross-modal person search on one set of datamodules, one evaluator and one CLI."""

__version__ = "0.1.0"
