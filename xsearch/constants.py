"""Constants shared across layers (a leaf module: it imports nothing from xsearch)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""RGB mean (0-1) of OpenAI CLIP's image normalisation."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""RGB std (0-1) of OpenAI CLIP's image normalisation."""
