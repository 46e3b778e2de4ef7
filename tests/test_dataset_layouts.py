"""Shared checks over every dataset fixture in ``tests/layouts`` (one per registered parser).

For each official layout: exact per-split counts, ``xsearch data check`` output, the parse cache,
every bad input -> exit 2 with one line naming the file and place, and a few training steps of
the ``dual_encoder`` baseline (fit + test) on the fixture.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from layouts import BAD_INPUTS, BUILDERS

from xsearch.cli import main
from xsearch.datamodules import load_dataset
from xsearch.registry import DATASETS

CONFIG = str(Path(__file__).parents[1] / "configs" / "tiny" / "dual_encoder.yaml")
NAMES = sorted(BUILDERS)
CASES = [(name, case) for name in NAMES for case in BAD_INPUTS[name]]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))


def _option_args(options: dict) -> list[str]:
    return [arg for key, value in options.items() for arg in ("--option", f"{key}={json.dumps(value)}")]


def test_every_registered_dataset_has_a_fixture():
    synthetic_only = {"synth_pedes", "synth_pfs"}  # the generator is the fixture (tests/test_synthetic.py, test_synth_pfs.py)
    assert set(DATASETS.names()) - synthetic_only <= set(BUILDERS), "every parser needs a layout in tests/layouts"


@pytest.mark.parametrize("name", NAMES)
def test_counts_per_split(name, tmp_path):
    layout = BUILDERS[name](tmp_path)
    index = load_dataset(layout.dataset, layout.root, layout.options, cache=False)
    assert index.summary() == layout.expected
    assert index.missing_images == []
    assert all(0 <= c.image_index < len(index.images) for c in index.captions)
    assert all(index.images[c.image_index].pid == c.pid for c in index.captions)


@pytest.mark.parametrize("name", NAMES)
def test_data_check_prints_the_json_contract(name, tmp_path, capsys):
    layout = BUILDERS[name](tmp_path)
    assert main(["data", "check", layout.dataset, "--root", str(layout.root), *_option_args(layout.options)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == layout.dataset and report["splits"] == layout.expected
    assert isinstance(report["warnings"], list) and all(isinstance(w, str) for w in report["warnings"])


@pytest.mark.parametrize("name", NAMES)
def test_parse_cache_follows_the_annotation_files(name, tmp_path):
    layout = BUILDERS[name](tmp_path)
    first = load_dataset(layout.dataset, layout.root, layout.options)
    again = load_dataset(layout.dataset, layout.root, layout.options)
    assert (first.extras["cache_hit"], again.extras["cache_hit"]) == (False, True)
    assert again.summary() == first.summary() and again.captions == first.captions
    source = first.sources[0]
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # "edited"
    assert load_dataset(layout.dataset, layout.root, layout.options).extras["cache_hit"] is False


@pytest.mark.parametrize("name", NAMES)
def test_missing_images_are_counted_with_paths(name, tmp_path):
    layout = BUILDERS[name](tmp_path)
    index = load_dataset(layout.dataset, layout.root, layout.options, cache=False)
    gone = [index.images[0].path, index.images[-1].path]
    for path in gone:
        path.unlink()
    index = load_dataset(layout.dataset, layout.root, layout.options, cache=False)
    assert index.missing_images == gone
    warning = next(w for w in index.warnings if "images are missing" in w)
    assert warning.startswith(f"2 of {len(index.images)} images are missing, e.g. ")
    assert str(gone[0].relative_to(layout.root)) in warning


@pytest.mark.parametrize("name", NAMES)
def test_nonexistent_root_is_one_line(name, tmp_path, capsys):
    assert main(["data", "check", name, "--root", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"xsearch: error: {tmp_path / 'nowhere'}: dataset folder for {name!r} not found"


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{n}-{c.name}" for n, c in CASES])
def test_bad_input_is_one_line_naming_the_place(name, case, tmp_path, capsys):
    layout = BUILDERS[name](tmp_path)
    case.mutate(layout.root)
    options = {**layout.options, **case.options}
    code = main(["data", "check", layout.dataset, "--root", str(layout.root), *_option_args(options)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and captured.out == ""
    assert len(lines) == 1 and lines[0].startswith("xsearch: error: "), captured.err
    assert re.search(case.message, lines[0]), lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fit_a_few_steps_and_test(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layout = BUILDERS[name](tmp_path / "data")
    args = [
        "fit", "--config", CONFIG, "--test_after_fit", "true", "--results", str(tmp_path / "r.sqlite"),
        "--data.dataset", layout.dataset, "--data.root", str(layout.root), "--data.generate", "null",
        "--data.dataset_options", json.dumps(layout.options), "--data.sampler", "random", "--data.batch_size", "4",
        "--trainer.limit_train_batches", "3", "--trainer.max_epochs", "1",
    ]
    assert main(args) == 0
    output = capsys.readouterr().out
    assert f"dual_encoder on {layout.dataset} (test): R1" in output
    assert sorted((tmp_path / "runs" / "tiny" / "checkpoints").glob("best-*.ckpt"))
