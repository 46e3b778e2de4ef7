"""Methods (registered LightningModules) and the encoders they share."""
from xsearch.models import dual_encoder  # noqa: F401  (registers dual_encoder)
from xsearch.models.base import RetrievalModule
from xsearch.models.dual_encoder import DualEncoder
from xsearch.models.encoders import ImageEncoder, Projection, TextEncoder

__all__ = ["RetrievalModule", "DualEncoder", "ImageEncoder", "Projection", "TextEncoder"]
