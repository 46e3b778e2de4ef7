"""Test-wide settings: no network, no W&B account, deterministic CPU."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["XSEARCH_CACHE"] = tempfile.mkdtemp(prefix="xsearch-test-cache-")  # never the user's ~/.cache
atexit.register(shutil.rmtree, os.environ["XSEARCH_CACHE"], ignore_errors=True)
