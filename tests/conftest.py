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


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).parents[1]


def fit_tiny_dual_encoder(workspace: Path, *options: str) -> Path:
    """``xsearch fit`` of the tiny dual_encoder config (no logger, no validation) with its synthetic data under
    ``workspace/data`` and its checkpoints in ``workspace/run``; ``options`` are more CLI arguments. Returns
    ``last.ckpt``."""
    from xsearch.cli import main

    previous = os.environ.get("XSEARCH_DATA")
    os.environ["XSEARCH_DATA"] = str(workspace / "data")
    try:
        code = main(["fit", "--config", str(ROOT / "configs" / "tiny" / "dual_encoder.yaml"), "--trainer.logger", "false",
                     "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                     "--trainer.default_root_dir", str(workspace / "run"), "--checkpoint.dirpath", str(workspace / "run"),
                     "--results", str(workspace / "results.sqlite"), *options])
    finally:
        os.environ.pop("XSEARCH_DATA") if previous is None else os.environ.__setitem__("XSEARCH_DATA", previous)
    assert code == 0
    return workspace / "run" / "last.ckpt"


@pytest.fixture(scope="session")
def fit_tiny():
    """:func:`fit_tiny_dual_encoder`, for test modules that fit their own checkpoint."""
    return fit_tiny_dual_encoder


@pytest.fixture(scope="module")
def trained(workspace: Path) -> Path:
    """A dual_encoder checkpoint written by `xsearch fit` (tiny config, one step on an 8-identity synthetic set) in the
    requesting module's ``workspace`` folder (the search and serve tests)."""
    return fit_tiny_dual_encoder(workspace, "--trainer.max_steps", "1", "--data.root", "pedes",
                                 "--data.generate", "{identities: 8, seed: 0}", "--data.sampler", "random",
                                 "--data.cache_images", "false")
