"""benchmarks/gpu_check.py: its table from real tiny CPU measurements, its rows from given results, its one-line exit
without a GPU, and (slow) its DDP section with gloo on the CPU."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
HEADER = "| check | setting | result | peak GPU memory | notes |"
CHECKS = ["training: bare PyTorch loop", "training: Trainer.fit"] * 2 + [
    "validation pass (Trainer.validate)", "evaluator on {device} vs cpu", "DDP, 2 processes (NCCL)"]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses and the DDP processes look it up by name
    spec.loader.exec_module(module)
    return module


def assert_table_shape(text: str, device: str) -> list[str]:
    """The rendered table: a header line, a blank line, the column row, the rule, one line per check."""
    lines = text.splitlines()
    assert lines[1] == "" and lines[2] == HEADER and lines[3] == "|---|---|---|---|---|"
    rows = lines[4:]
    assert [line.split(" | ")[0].lstrip("| ") for line in rows] == [c.format(device=device) for c in CHECKS]
    assert all(line.startswith("| ") and line.endswith(" |") and line.count(" | ") == 4 for line in rows)
    return rows


def test_tiny_cpu_run_fills_every_row() -> None:
    gpu_check = load_gpu_check()
    settings = gpu_check.Settings.make("cpu", tiny=True)
    results = gpu_check.run_checks(settings, budget_s=300)
    rows = gpu_check.table_rows(settings, results)
    assert_table_shape(gpu_check.render(rows, "gpu_check test"), "cpu")
    assert [list(row) for row in rows] == [list(gpu_check.COLUMNS)] * len(CHECKS)
    bare, fit, bare_compiled, fit_compiled, validation, evaluator, ddp = rows
    assert bare["result"].endswith(" samples/s") and fit["result"].endswith(" samples/s")
    assert fit["notes"].startswith("Lightning overhead ") and fit["notes"].endswith("%")
    assert "eager" in bare["setting"] and "torch.compile" in bare_compiled["setting"]
    assert bare_compiled["result"].startswith("skipped with --tiny") and fit_compiled["result"].startswith("skipped")
    assert validation["result"].endswith(" s") and validation["setting"].startswith("16 captions x 8 images")
    assert evaluator["notes"] == "identical metrics and per-query positions: yes"
    assert ddp["result"].startswith("skipped: no GPU")
    assert all(row["peak GPU memory"] == "-" for row in rows)  # no GPU memory on the CPU


def test_rows_from_gpu_results_errors_and_skips() -> None:
    gpu_check = load_gpu_check()
    settings = gpu_check.Settings.make("cuda", tiny=False)
    results = {
        "train-bare": {"samples_per_s": 400.0, "peak_mb": 20000.0},
        "train-lightning": {"samples_per_s": 380.0, "peak_mb": 20100.0},
        "train-bare-compile": {"samples_per_s": 500.0, "peak_mb": 15000.0},
        "train-lightning-compile": {"error": "stopped after its 150 s time budget"},
        "validation": {"seconds": 12.5, "peak_mb": 3000.0, "R1": 0.1},
        "evaluator": {"seconds": 0.02, "cpu_seconds": 0.2, "identical": True, "R1": 64.1, "shape": [6156, 3074]},
        "ddp": {"skipped": "skipped: only 1 GPU(s) visible, a 2-process DDP step needs 2"},
    }
    rows = gpu_check.table_rows(settings, results)
    assert_table_shape(gpu_check.render(rows, "gpu_check test"), "cuda")
    assert rows[0]["result"] == "400.0 samples/s" and rows[0]["peak GPU memory"] == "20,000 MiB"
    assert rows[0]["setting"] == "IRRA, CLIP ViT-B/16 (random init) at 384x128, bf16-mixed, batch 64, eager"
    assert rows[1]["notes"] == "Lightning overhead 5.0%"
    assert rows[2]["notes"] == "1.25x eager"
    assert rows[3]["result"] == "stopped after its 150 s time budget" and rows[3]["peak GPU memory"] == "-"
    assert rows[4]["setting"].startswith("6,156 captions x 3,074 images, bf16-mixed")
    assert rows[5]["result"] == "0.020 s (cuda) vs 0.200 s (cpu)"
    assert rows[6]["result"] == "skipped: only 1 GPU(s) visible, a 2-process DDP step needs 2"


def test_without_gpu_one_line_and_exit_zero_at_once(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    start = time.monotonic()
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)],
                             env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    assert process.returncode == 0
    assert process.stdout.splitlines() == [load_gpu_check().NO_GPU_LINE] and process.stderr == ""
    assert not out.exists()
    assert time.monotonic() - start < 5  # decided without importing torch


@pytest.mark.slow
def test_ddp_section_with_gloo_on_cpu() -> None:
    gpu_check = load_gpu_check()
    result = gpu_check.measure_ddp(gpu_check.Settings.make("cpu", tiny=True), backend_cpu=True)
    assert result["gather_ok"] is True and result["samples_per_s"] > 0 and result["peak_mb"] is None
