"""One-command GPU check of training and evaluation speed: one table, printed and written to a file.

Usage::

    python benchmarks/gpu_check.py                       # CUDA machine, under 8 minutes; writes benchmarks/gpu_check.md
    python benchmarks/gpu_check.py --out gpu.md --budget-s 400
    python benchmarks/gpu_check.py --device cpu --tiny   # the same table on tiny shapes, on the CPU (seconds)

Without a visible CUDA GPU (and without ``--device cpu``) it prints one line saying so and exits with code 0 at once.

Rows, in the order they run (each section gets at most its cap and what is left of ``--budget-s``; one that does not
fit any more is listed as skipped, so the whole check stays within the budget):

* training: IRRA on CLIP ViT-B/16 towers (random weights from a ViT-B/16-sized ``CLIPConfig``, no download) at
  384x128, bf16-mixed, batch 64: samples/s of a bare PyTorch loop and of ``Trainer.fit`` on the same batches, eager
  then with ``torch.compile``, and the peak GPU memory of each (every variant in its own process, with
  ``benchmarks/train_step.py``'s model, batches and loops);
* one validation pass at CUHK-PEDES test size (6,156 captions x 3,074 images, synthetic) through
  ``Trainer.validate``: encoding both sides and computing the metrics, timed after a warm-up batch;
* the evaluator (``retrieval_metrics``) on the GPU and on the CPU, on the same (6,156, 3,074) score matrix, and
  whether the metrics and every query's positions are identical;
* a 2-process DDP (NCCL) training step with the cross-rank embedding gather (checked: rank order, 2 x batch rows)
  when 2 GPUs are visible, else a row saying it was skipped and why.

``--tiny`` swaps in the small CPU configuration (``configs/irra/synth_pedes.yaml``: 64x32 images, a 2-layer CLIP),
batch 4, one timed step, 16 captions x 8 images, a 616 x 308 evaluator matrix; it runs every section in this
process and skips ``torch.compile``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

COLUMNS = ("check", "setting", "result", "peak GPU memory", "notes")
NO_GPU_LINE = ("gpu_check: no CUDA GPU visible, nothing measured; "
               "run it on a GPU machine, or with --device cpu --tiny for a CPU smoke run")
DEFAULT_BUDGET_S = 450.0  # 7.5 minutes: the check must end within 8 on one H100
RESERVE_S = 5.0  # kept back for printing and writing the table


@dataclass(frozen=True)
class Settings:
    """What every section measures: the full GPU check or its tiny CPU version."""

    device: str
    tiny: bool
    config: str = "configs/irra/synth_pedes.yaml"
    vit_b16: bool = True
    image_size: tuple[int, int] = (384, 128)
    batch_size: int = 64
    warmup: int = 5
    steps: int = 20
    identities: int = 1000
    captions: int = 6156
    images: int = 3074
    eval_batch_size: int = 256
    precision: str = "bf16"

    @classmethod
    def make(cls, device: str, tiny: bool) -> Settings:
        if not tiny:
            return cls(device=device, tiny=False)
        return cls(device=device, tiny=True, vit_b16=False, image_size=(64, 32), batch_size=4, warmup=1, steps=1,
                   identities=10, captions=16, images=8, eval_batch_size=8,
                   precision="bf16" if device == "cuda" else "32")

    def model_name(self) -> str:
        size = "x".join(map(str, self.image_size))
        return f"IRRA, CLIP ViT-B/16 (random init) at {size}" if self.vit_b16 else f"IRRA, {self.config} at {size}"


# Sections: (key, check, setting, cap in seconds on the GPU). The training variants are (mode, compiled).
TRAIN_VARIANTS = [("bare", False), ("lightning", False), ("bare", True), ("lightning", True)]
CAPS_S = {"train-bare": 75.0, "train-lightning": 75.0, "validation": 90.0, "evaluator": 45.0, "ddp": 90.0,
          "train-bare-compile": 150.0, "train-lightning-compile": 150.0}
ORDER = ["train-bare", "train-lightning", "validation", "evaluator", "ddp", "train-bare-compile",
         "train-lightning-compile"]
MIN_S = 15.0  # a section with less than this left is skipped


def _train_namespace(settings: Settings, mode: str, compiled: bool) -> argparse.Namespace:
    """Arguments of ``train_step.py``'s worker for one training variant."""
    return argparse.Namespace(config=settings.config, vit_b16=settings.vit_b16, image_size=list(settings.image_size),
                              batch_size=settings.batch_size, identities=settings.identities, steps=settings.steps,
                              warmup=settings.warmup, device=settings.device, channels_last=False, worker=mode,
                              precision=settings.precision, compile=compiled)


def measure_training(settings: Settings, mode: str, compiled: bool) -> dict:
    """``{"samples_per_s", "peak_mb", "seconds"}`` of ``mode`` (``bare`` loop or ``lightning`` ``Trainer.fit``)."""
    import train_step

    return train_step.measure(_train_namespace(settings, mode, compiled))


def _eval_batches(settings: Settings) -> tuple[list[dict], list[dict]]:
    """Synthetic CUHK-PEDES-like evaluation loaders' batches: captions (2 per image, a few images with 3) and images.

    Returns:
        query batches ``{"text": [str], "pid": (B,), "index": (B,)}`` and gallery batches ``{"image": (B, 3, H, W)
        uint8, "pid": (B,), "index": (B,)}``.
    """
    import random

    import torch
    from train_step import WORDS

    generator = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    image_pids = torch.arange(settings.images) % max(1, settings.images // 3)  # about 3 images per identity
    image_of_caption = torch.arange(settings.captions) % settings.images
    caption_pids = image_pids[image_of_caption]
    height, width = settings.image_size
    step = settings.eval_batch_size
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(8, 20))) for _ in range(settings.captions)]
    queries = [{"text": texts[lo:lo + step], "pid": caption_pids[lo:lo + step],
                "index": torch.arange(lo, min(lo + step, settings.captions))}
               for lo in range(0, settings.captions, step)]
    gallery = [{"image": torch.randint(0, 256, (min(step, settings.images - lo), 3, height, width), generator=generator,
                                       dtype=torch.uint8),
                "pid": image_pids[lo:lo + step], "index": torch.arange(lo, min(lo + step, settings.images))}
               for lo in range(0, settings.images, step)]
    return queries, gallery


def _build_model(settings: Settings):
    """The training check's model (random weights), without batches."""
    import train_step

    args = _train_namespace(settings, "lightning", False)
    args.steps, args.warmup = 0, 0
    model, _ = train_step.build(args)
    return model


def measure_validation(settings: Settings) -> dict:
    """One ``Trainer.validate`` pass over the synthetic captions and images: ``seconds``, ``peak_mb``, ``R1``."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    model = _build_model(settings)
    queries, gallery = _eval_batches(settings)
    device = settings.device
    model.to(device).eval()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
        model.encode_queries(queries[0])  # warm-up: kernels, tokenizer
        model.encode_gallery({k: v.to(device) if hasattr(v, "to") else v for k, v in gallery[0].items()})
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False,
                        precision="bf16-mixed" if settings.precision == "bf16" else "32-true",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    results = trainer.validate(model, dataloaders=[DataLoader(queries, batch_size=None),
                                                   DataLoader(gallery, batch_size=None)], verbose=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": _peak_mb(device), "R1": float(results[0]["val/R1"])}


def _peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def measure_evaluator(settings: Settings, repeats: int = 3) -> dict:
    """``retrieval_metrics`` of the same (6,156, 3,074) cosine matrix (616 x 308 with ``--tiny``) on
    ``settings.device`` and on the CPU: best times, whether metrics and per-query positions are identical."""
    import torch
    from eval_speed import cosine, cuhk_like_problem

    from xsearch.evaluation import retrieval_metrics, retrieval_metrics_per_query

    captions, caption_pids, images, image_pids = cuhk_like_problem(0)
    if settings.tiny:  # the first 616 captions describe the first 308 images (ids 0-307, one image each here)
        captions, caption_pids, images, image_pids = captions[:616], caption_pids[:616], images[:308], image_pids[:308]
    similarity = cosine(captions, images)  # computed once, on the CPU: both devices rank the very same scores
    times, metrics, per_query = {}, {}, {}
    for device in (settings.device, "cpu"):
        scores, query_pids, gallery_pids = (t.to(device) for t in (similarity, caption_pids, image_pids))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            metrics[device] = retrieval_metrics(scores, query_pids, gallery_pids)  # returns floats: synchronised
            best = min(best, time.perf_counter() - start)
        times[device] = best
        result = retrieval_metrics_per_query(scores, query_pids, gallery_pids)
        per_query[device] = [t.cpu() for t in (result.first_positive_rank, result.last_positive_rank,
                                               result.average_precision, result.inverse_negative_penalty)]
    identical = metrics[settings.device] == metrics["cpu"] and all(
        torch.equal(a, b) for a, b in zip(per_query[settings.device], per_query["cpu"]))
    return {"seconds": times[settings.device], "cpu_seconds": times["cpu"], "identical": identical,
            "R1": metrics["cpu"]["R1"], "shape": list(similarity.shape)}


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, settings_json: str, out: str) -> None:
    """One DDP rank: check the cross-rank gather, then time IRRA training steps (whose SDM loss gathers)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import train_step
    from xsearch.distributed import gather

    settings = Settings(**{**json.loads(settings_json), "image_size": tuple(json.loads(settings_json)["image_size"])})
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if settings.device == "cuda" else "gloo"
    device = f"cuda:{rank}" if settings.device == "cuda" else "cpu"
    if settings.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        marker = torch.full((settings.batch_size, 1), float(rank), device=device, requires_grad=True)
        gathered = gather(marker)[0]
        expected = torch.arange(world_size, device=device).repeat_interleave(settings.batch_size)[:, None].float()
        gather_ok = tuple(gathered.shape) == (world_size * settings.batch_size, 1) and torch.equal(gathered, expected)
        model, batches = train_step.build(_train_namespace(settings, "bare", False))

        class Loss(torch.nn.Module):  # DDP synchronises gradients of what runs through its forward
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, batch: dict) -> torch.Tensor:
                return self.model.training_losses(batch)["loss"]

        ddp = DistributedDataParallel(Loss().to(device), device_ids=[rank] if settings.device == "cuda" else None,
                                      find_unused_parameters=True)
        optimizer = torch.optim.AdamW(model.parameter_groups(), lr=model.hparams.lr)
        start = 0.0
        for i, batch in enumerate(batches):
            if i == settings.warmup:
                if settings.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            with torch.autocast(settings.device, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
                loss = ddp(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if settings.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.tensor([_peak_mb(settings.device) or 0.0], device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        if rank == 0:
            Path(out).write_text(json.dumps({
                "seconds": seconds, "samples_per_s": world_size * settings.steps * settings.batch_size / seconds,
                "peak_mb": float(peak) if settings.device == "cuda" else None, "gather_ok": bool(gather_ok)}))
    finally:
        dist.destroy_process_group()


def measure_ddp(settings: Settings, backend_cpu: bool = False) -> dict:
    """2-process DDP steps (NCCL on 2 GPUs; gloo on the CPU with ``backend_cpu``), or ``{"skipped": why}``."""
    import torch
    import torch.multiprocessing as mp

    gpus = _visible_gpus()
    if settings.device == "cuda" and gpus < 2:
        return {"skipped": f"skipped: only {gpus} GPU(s) visible, a 2-process DDP step needs 2"}
    if settings.device != "cuda" and not backend_cpu:
        return {"skipped": "skipped: no GPU (2-process NCCL needs 2 GPUs)"}
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "ddp.json")
        mp.spawn(_ddp_worker, args=(2, _free_port(), json.dumps(asdict(settings)), out), nprocs=2, join=True)
        return json.loads(Path(out).read_text())


SECTIONS: dict[str, Callable[[Settings], dict]] = {
    "train-bare": lambda s: measure_training(s, "bare", False),
    "train-lightning": lambda s: measure_training(s, "lightning", False),
    "train-bare-compile": lambda s: measure_training(s, "bare", True),
    "train-lightning-compile": lambda s: measure_training(s, "lightning", True),
    "validation": measure_validation,
    "evaluator": measure_evaluator,
    "ddp": measure_ddp,
}


def _run_child(section: str, settings: Settings, timeout_s: float) -> dict:
    """Run one section in a fresh process (its own peak memory, compile caches) killed after ``timeout_s``."""
    command = [sys.executable, __file__, "--section", section, "--device", settings.device]
    command += ["--tiny"] if settings.tiny else []
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own group: compile workers die with it
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"error": f"stopped after its {timeout_s:.0f} s time budget"}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed (exit {process.returncode}): {last[:160]}"}
    return json.loads(lines[-1])


def _memory(result: dict, device: str) -> str:
    """Peak GPU memory of a section ("-" on the CPU, where train_step reports the process's RSS instead)."""
    return "-" if device != "cuda" or result.get("peak_mb") is None else f"{result['peak_mb']:,.0f} MiB"


def table_rows(settings: Settings, results: dict[str, dict]) -> list[dict[str, str]]:
    """One row per section (``COLUMNS`` keys), from each section's result, error or skip reason."""
    rows = []
    precision = "bf16-mixed" if settings.precision == "bf16" else "fp32"
    batch = f"{precision}, batch {settings.batch_size}"
    bare = {compiled: results.get("train-bare" + ("-compile" if compiled else ""), {}) for compiled in (False, True)}
    for mode, compiled in TRAIN_VARIANTS:
        key = f"train-{mode}" + ("-compile" if compiled else "")
        result = results.get(key, {"skipped": "not run"})
        check = f"training: {'bare PyTorch loop' if mode == 'bare' else 'Trainer.fit'}"
        setting = f"{settings.model_name()}, {batch}, {'torch.compile' if compiled else 'eager'}"
        notes = ""
        if mode == "lightning" and "samples_per_s" in result and "samples_per_s" in bare[compiled]:
            notes = f"Lightning overhead {100 * (1 - result['samples_per_s'] / bare[compiled]['samples_per_s']):.1f}%"
        if compiled and "samples_per_s" in result:
            eager = results.get(f"train-{mode}", {})
            if "samples_per_s" in eager:
                speedup = f"{result['samples_per_s'] / eager['samples_per_s']:.2f}x eager"
                notes = "; ".join(filter(None, [notes, speedup]))
        rows.append(_row(check, setting, result, lambda r: f"{r['samples_per_s']:.1f} samples/s", notes,
                         settings.device))
    result = results.get("validation", {"skipped": "not run"})
    rows.append(_row("validation pass (Trainer.validate)",
                     f"{settings.captions:,} captions x {settings.images:,} images, {precision}, "
                     f"eval batch {settings.eval_batch_size}", result, lambda r: f"{r['seconds']:.2f} s",
                     f"R1 {result['R1']:.2f} (random weights)" if "R1" in result else "", settings.device))
    result = results.get("evaluator", {"skipped": "not run"})
    rows.append(_row(f"evaluator on {settings.device} vs cpu",
                     "retrieval_metrics, " + "x".join(map(str, result.get("shape", [6156, 3074]))) + " fp32 scores",
                     result, lambda r: f"{r['seconds']:.3f} s ({settings.device}) vs {r['cpu_seconds']:.3f} s (cpu)",
                     (f"identical metrics and per-query positions: {'yes' if result['identical'] else 'NO'}"
                      if "identical" in result else ""), settings.device))
    result = results.get("ddp", {"skipped": "not run"})
    rows.append(_row("DDP, 2 processes (NCCL)", f"{settings.model_name()}, {batch} per rank, SDM loss gathers "
                     "across ranks", result, lambda r: f"{r['samples_per_s']:.1f} samples/s (both ranks)",
                     (f"gather: {'rank order, 2 x batch rows' if result['gather_ok'] else 'WRONG'}"
                      if "gather_ok" in result else ""), settings.device))
    return rows


def _row(check: str, setting: str, result: dict, value: Callable[[dict], str], notes: str,
         device: str) -> dict[str, str]:
    if "skipped" in result or "error" in result:
        return dict(zip(COLUMNS, (check, setting, result.get("skipped") or result["error"], "-", notes)))
    return dict(zip(COLUMNS, (check, setting, value(result), _memory(result, device), notes)))


def render(rows: list[dict[str, str]], header: str) -> str:
    """Markdown: a header line, then the table."""
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[column].replace("|", "/") for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_checks(settings: Settings, budget_s: float, in_process: bool | None = None,
               log: Callable[[str], None] = lambda message: None) -> dict[str, dict]:
    """Every section within ``budget_s``: in fresh processes on the GPU, here with ``--tiny`` (``in_process``).

    On the CPU, sections run with one intra-op thread (restored afterwards): the tiny model's small ops stall on
    OpenMP barriers when the cores are shared (measured: 0.7 s instead of 2-8 s for the tiny training section).
    """
    import torch

    threads = torch.get_num_threads()
    if settings.device == "cpu":
        torch.set_num_threads(1)
    try:
        return _run_sections(settings, budget_s, settings.tiny if in_process is None else in_process, log)
    finally:
        torch.set_num_threads(threads)


def _run_sections(settings: Settings, budget_s: float, in_process: bool,
                  log: Callable[[str], None]) -> dict[str, dict]:
    deadline = time.monotonic() + budget_s - RESERVE_S
    results: dict[str, dict] = {}
    for section in ORDER:
        if settings.tiny and section.endswith("-compile"):
            results[section] = {"skipped": "skipped with --tiny (torch.compile takes minutes)"}
            continue
        left = deadline - time.monotonic()
        if left < MIN_S and not settings.tiny:
            results[section] = {"skipped": f"skipped: time budget ({budget_s:.0f} s) spent"}
            continue
        log(f"{section} ({left:.0f} s left)")
        start = time.monotonic()
        if in_process or section == "ddp" and _visible_gpus() < 2:  # a skipped DDP needs no process of its own
            try:
                results[section] = SECTIONS[section](settings)
            except Exception as error:  # noqa: BLE001  (a failed section is a row, not the end of the check)
                results[section] = {"error": f"failed: {type(error).__name__}: {str(error)[:160]}"}
        else:
            results[section] = _run_child(section, settings, min(CAPS_S[section], left))
        log(f"{section}: {time.monotonic() - start:.0f} s")
    return results


def _gpu_may_be_visible() -> bool:
    """False when no CUDA GPU can be visible, decided without importing torch: CUDA_VISIBLE_DEVICES empty or -1, or
    (Linux) no NVIDIA device node."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if sys.platform.startswith("linux") and not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="where to write the table (default: benchmarks/gpu_check.md, "
                        "with --tiny: benchmarks/gpu_check_tiny.md)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time budget of the whole check")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run of the same table)")
    parser.add_argument("--section", default=None, help=argparse.SUPPRESS)  # internal: run one section, print JSON
    args = parser.parse_args(argv)
    if args.device == "cuda" and not _gpu_may_be_visible():
        print(NO_GPU_LINE)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU_LINE)
        return 0
    settings = Settings.make(args.device, args.tiny)
    if args.section:
        print(json.dumps(SECTIONS[args.section](settings)))
        return 0
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    header = (f"gpu_check {date.today().isoformat()}: {device_name}, torch {torch.__version__}, "
              f"{torch.cuda.device_count() if args.device == 'cuda' else 0} GPU(s), budget {args.budget_s:.0f} s"
              + (", --tiny" if args.tiny else ""))
    start = time.monotonic()
    results = run_checks(settings, args.budget_s, log=lambda message: print(f"[gpu_check] {message}", flush=True))
    text = render(table_rows(settings, results), header + f", took {time.monotonic() - start:.0f} s")
    print(text, end="")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / ("gpu_check_tiny.md" if args.tiny else "gpu_check.md")
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
