"""Training-step speed: xsearch through Lightning vs a bare PyTorch loop of the same model, loss and optimiser.

Usage::

    python benchmarks/train_step.py                       # small CPU configuration (configs/irra/synth_pedes_scratch.yaml)
    python benchmarks/train_step.py --vit-b16 --batch-size 64 --image-size 384 128   # IRRA's CLIP ViT-B/16 (GPU)

Each variant runs in its own process (its own peak memory) on the same in-memory batches (random images, generated
captions tokenised by the model as in training, identity labels), ``--warmup`` steps untimed, then ``--steps`` timed.
Variants: bare fp32 and Lightning fp32; on CUDA also bf16 autocast (bare and Lightning) and Lightning bf16 +
``torch.compile``. Printed: samples/s, peak memory, Lightning's overhead over the bare loop and each variant's speedup
over fp32 eager. ``--vit-b16`` builds the ViT-B/16 architecture with random weights (no download needed).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIT_B16 = {  # openai/clip-vit-base-patch16
    "text_config": {"vocab_size": 49408, "hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
                    "intermediate_size": 2048, "max_position_embeddings": 77},
    "vision_config": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                      "image_size": 224, "patch_size": 16},
    "projection_dim": 512,
}
WORDS = ("a man woman person wearing red blue black white grey green jacket coat shirt trousers jeans skirt backpack "
         "bag shoes carrying walking with and the long short hair glasses hat").split()


def build(args: argparse.Namespace):
    """The config's model (random weights) and ``steps + warmup`` batches of ``batch_size``."""
    import torch
    import yaml
    from jsonargparse import ArgumentParser

    from xsearch.models.base import RetrievalModule

    raw = yaml.safe_load((ROOT / args.config).read_text())
    model_config = raw["model"]
    if args.vit_b16:
        towers = model_config["init_args"]["towers"]["init_args"]
        towers.pop("name", None)
        towers.update(config=VIT_B16, image_size=list(args.image_size or (384, 128)))
    parser = ArgumentParser()
    parser.add_subclass_arguments(RetrievalModule, "model", required=True)
    model = parser.instantiate_classes(parser.parse_object({"model": model_config})).model
    model.build_identity_modules(args.identities)
    height, width = args.image_size or raw["data"]["image_size"]
    generator = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    batches = []
    for _ in range(args.steps + args.warmup):
        pids = torch.arange(args.batch_size) // 4 % args.identities  # 4 samples per identity, as the P x K sampler
        batches.append({
            "image": torch.randn(args.batch_size, 3, height, width, generator=generator),
            "text": [" ".join(rng.choices(WORDS, k=rng.randint(8, 20))) for _ in range(args.batch_size)],
            "pid": pids,
        })
    return model, batches


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bare(args: argparse.Namespace) -> dict:
    """Plain loop: forward (autocast when bf16), backward, fused AdamW step."""
    import torch

    model, batches = build(args)
    device = args.device
    model.to(device).train()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    groups = model.parameter_groups()
    optimizer = torch.optim.AdamW(groups, lr=model.hparams.lr, fused=True)
    step_fn = torch.compile(model.training_losses) if args.compile else model.training_losses
    start = 0.0
    for i, batch in enumerate(batches):
        if i == args.warmup:
            _sync(device)
            start = time.perf_counter()
        batch = _to(batch, device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = step_fn(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return {"seconds": time.perf_counter() - start}


def lightning(args: argparse.Namespace) -> dict:
    """The same model through ``Trainer.fit`` (its training_step, logging, configure_optimizers, precision plugin)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    model, batches = build(args)
    if args.compile:
        model = torch.compile(model)
    marks: dict[str, float] = {}

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == args.warmup:
                _sync(args.device)
                marks["start"] = time.perf_counter()

        def on_train_end(self, trainer, module):
            _sync(args.device)
            marks["end"] = time.perf_counter()

    trainer = L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, max_steps=len(batches),
                        precision="bf16-mixed" if args.precision == "bf16" else "32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Clock()])
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return {"seconds": marks["end"] - marks["start"]}


def measure(args: argparse.Namespace) -> dict:
    """Run variant ``args.worker`` (``bare`` or ``lightning``) in this process: ``seconds`` of the timed steps,
    ``samples_per_s`` and ``peak_mb`` (CUDA: peak allocated since the last reset; CPU: the process's peak RSS)."""
    import torch

    torch.manual_seed(0)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {"bare": bare, "lightning": lightning}[args.worker](args)
    result["samples_per_s"] = args.steps * args.batch_size / result["seconds"]
    result["peak_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda"
                         else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def worker(args: argparse.Namespace) -> None:
    print(json.dumps(measure(args)))


VARIANTS_CPU = [("bare", "32", False), ("lightning", "32", False)]
VARIANTS_GPU = VARIANTS_CPU + [("bare", "bf16", False), ("lightning", "bf16", False), ("lightning", "bf16", True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/irra/synth_pedes_scratch.yaml", help="a method config (its model section)")
    parser.add_argument("--vit-b16", action="store_true", help="CLIP ViT-B/16 towers (random weights) instead")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, help="H W (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant (the best is kept)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        worker(args)
        return
    base = [sys.executable, __file__, "--config", args.config, "--batch-size", str(args.batch_size), "--identities",
            str(args.identities), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
    base += ["--vit-b16"] if args.vit_b16 else []
    base += ["--image-size", *map(str, args.image_size)] if args.image_size else []
    base += ["--channels-last"] if args.channels_last else []
    results = {}
    print(f"{'ViT-B/16 (random weights)' if args.vit_b16 else args.config}, batch {args.batch_size}, {args.steps} timed "
          f"steps after {args.warmup}, device {args.device}, best of {args.repeats}")
    print("| variant | samples/s | peak memory (MiB) | vs bare fp32 |")
    print("|---|---:|---:|---:|")
    for mode, precision, compiled in (VARIANTS_GPU if args.device == "cuda" else VARIANTS_CPU):
        command = base + ["--worker", mode, "--precision", precision] + (["--compile"] if compiled else [])
        runs = []
        for _ in range(args.repeats):  # alternate nothing: each repeat is a fresh process
            out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        best = max(runs, key=lambda r: r["samples_per_s"])
        name = f"{mode} {precision}{' + compile' if compiled else ''}"
        results[name] = best
        reference = results["bare 32"]["samples_per_s"]
        print(f"| {name} | {best['samples_per_s']:.1f} | {best['peak_mb']:.0f} | {best['samples_per_s'] / reference:.3f}x |",
              flush=True)
    overhead = 1 - results["lightning 32"]["samples_per_s"] / results["bare 32"]["samples_per_s"]
    print(f"Lightning overhead over the bare loop (fp32): {100 * overhead:.1f}%")


if __name__ == "__main__":
    main()
