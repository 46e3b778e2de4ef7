"""Speed levers for the quickstart model on this CPU, each against the current fp32 path in the same process.

Usage::

    python benchmarks/quickstart_levers.py                 # caption caching, training step, gallery encoding
    python benchmarks/quickstart_levers.py --compile       # + torch.compile of the image backbone, training step and
                                                           #   gallery encoding (minutes to compile on 2 cores)

The model is ``configs/quickstart.yaml``'s (EfficientNet-Lite0 with its offline ImageNet weights, frozen MiniLM with
a token head, 256-d heads) on random 96x48 images and generated captions. Levers: ``bf16`` autocast (oneDNN runs bf16
matmuls and convolutions natively where the CPU has ``avx512_bf16`` / ``amx_bf16``; printed first), the channels-last
backbone (``ImageEncoder``'s layout; the baseline is the contiguous one), the depthwise weight gradients computed tap by
tap on maps smaller than the kernel (``xsearch.models.depthwise``; against oneDNN's kernel), 1x1 convolutions as
matrix products (``xsearch.models.pointwise``; against oneDNN's kernel), the token head on real
tokens only (``xsearch.models.token_head``; against the library's padded forward), caption batches sorted by token
count (against batches sorted by character count), ``torch.compile``. For each: seconds, the
speed-up over the baseline, and the largest difference of its outputs from it (bf16 changes what the model computes:
the difference is printed, never hidden).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("a man woman person wearing red blue black white grey green jacket coat shirt trousers jeans skirt backpack "
         "bag shoes carrying walking with and the long short hair glasses hat").split()


def cpu_bf16_support() -> str:
    """The processor's bf16 flags (``/proc/cpuinfo``) and whether oneDNN says it runs bf16 natively."""
    import torch

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    found = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f") if f in flags] or ["none"]
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return f"cpu flags: {' '.join(found)}; oneDNN bf16 supported: {native}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def build_model() -> Any:
    import yaml
    from jsonargparse import ArgumentParser

    from xsearch.models.base import RetrievalModule

    raw = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    parser = ArgumentParser()
    parser.add_subclass_arguments(RetrievalModule, "model", required=True)
    model = parser.instantiate_classes(parser.parse_object({"model": raw["model"]})).model
    model.build_identity_modules(1800)
    return model


def captions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 40))) for _ in range(count)]


def timed(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls (after one untimed call) and the last output."""
    out = function()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = function()
        best = min(best, time.perf_counter() - started)
    return best, out


def train_step(net: Any, optimizer: Any, batch: dict[str, Any],
               context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> float:
    """One training step of ``net`` on ``batch`` (forward under ``context``, backward, optimiser step); its loss."""
    with context():
        loss = net.training_losses(batch)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def bf16() -> contextlib.AbstractContextManager:
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)


def library_depthwise_gradient() -> contextlib.AbstractContextManager:
    """The depthwise convolutions' weight gradients from the library's kernel everywhere (the path before
    ``xsearch.models.depthwise``)."""
    from unittest import mock

    return mock.patch("xsearch.models.depthwise.needs_tap_gradient", return_value=False)


def library_pointwise() -> contextlib.AbstractContextManager:
    """The 1x1 convolutions on oneDNN's convolution kernel (the path before ``xsearch.models.pointwise``)."""
    from unittest import mock

    import torch

    from xsearch.models.pointwise import PointwiseConv2d

    return mock.patch.object(PointwiseConv2d, "forward", torch.nn.Conv2d.forward)


def library_token_head() -> contextlib.AbstractContextManager:
    """The text token head's library forward over every padded position (the path before
    ``xsearch.models.token_head``)."""
    from unittest import mock

    def padded(head: Any, project: Any, states: Any, mask: Any) -> Any:
        return head(project(states), src_key_padding_mask=mask == 0)
    return mock.patch("xsearch.models.encoders.run_token_head", padded)


def contiguous_copy(model: Any) -> Any:
    """``model`` with its image backbone in the default contiguous layout, fed contiguous inputs: the path before
    channels-last. (Only the weights in that layout is not enough: a channels-last input makes every convolution
    after it run channels-last.)"""
    import torch

    net = copy.deepcopy(model)
    encoder = net.image_encoder
    encoder.backbone.to(memory_format=torch.contiguous_format)
    encoder.normalise = lambda pixels: ((pixels - encoder.mean) / encoder.std).contiguous()
    return net


def report(name: str, base: float, seconds: float, difference: float | None) -> None:
    shown = "" if difference is None else f"  max |diff| vs fp32 {difference:.2e}"
    print(f"  {name:<28} {seconds * 1000:9.1f} ms  x{base / seconds:5.2f}{shown}")


def main() -> None:
    import torch

    from xsearch.allocator import keep_freed_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--captions", type=int, default=1024, help="captions encoded by the caching benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the image backbone (step, gallery)")
    args = parser.parse_args()
    torch.manual_seed(0)
    keep_freed_memory()  # as the xsearch command does
    print(cpu_bf16_support())
    model = build_model()
    text = model.text_encoder

    # 1. caption token states of the frozen text tower (what the quickstart caches before training)
    print(f"caption caching, {args.captions} captions:")
    texts = captions(args.captions)

    def cache(dtype: str, batches_by_characters: bool = False) -> Any:
        text.cache_dtype = dtype
        text._cache.clear()
        if batches_by_characters:  # batches of 256 by character count: each call computes the batch it is given
            ordered = sorted(texts, key=lambda t: (len(t), t))
            for start in range(0, len(ordered), 256):
                text.precompute(ordered[start : start + 256])
        else:
            text.precompute(texts)
        return torch.nn.utils.rnn.pad_sequence([text._cache[t].float() for t in texts[:64]], batch_first=True)

    configured = text.cache_dtype
    base, reference = timed(lambda: cache("float32"), 1)
    report("fp32", base, base, None)
    seconds, out = timed(lambda: cache("float32", batches_by_characters=True), 1)
    report("  batches sorted by characters", base, seconds, float((out - reference).abs().max()))
    print(f"  (batches sorted by token count: x{seconds / base:.2f} over batches sorted by characters)")
    seconds, out = timed(lambda: cache("bfloat16"), 1)
    report("bf16 (cache_dtype bfloat16)", base, seconds, float((out - reference).abs().max()))
    text.cache_dtype = configured

    # 2. one training step (forward, backward, AdamW) on cached captions; the image backbone runs channels-last
    #    (ImageEncoder's layout); the baseline is the same model with its backbone in the default contiguous layout
    print(f"training step, batch {args.batch_size}:")
    images = torch.randint(0, 256, (args.batch_size, 3, 96, 48), dtype=torch.uint8)
    batch = {"image": images, "text": captions(args.batch_size, seed=1),
             "pid": torch.arange(args.batch_size) // 2}
    text.precompute(batch["text"])
    lengths = torch.tensor([len(text._cache[t]) for t in batch["text"]])
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # the token head's (B, L) padded batch
    model.train()
    contiguous = contiguous_copy(model)
    untouched = copy.deepcopy(model)  # for the depthwise-gradient row: the same steps from the same weights
    padded_head = copy.deepcopy(model)  # for the token-head row
    convolutions = copy.deepcopy(model)  # for the 1x1-convolution row

    def stepper(net: Any) -> Callable[[Callable[[], contextlib.AbstractContextManager]], float]:
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-6)

        def step(context: Callable[[], contextlib.AbstractContextManager]) -> float:
            torch.manual_seed(0)
            return train_step(net, optimizer, batch, context)
        return step

    base, loss = timed(lambda: stepper(contiguous)(contextlib.nullcontext), args.repeats)
    report("fp32, contiguous layout", base, base, None)
    step = stepper(model)
    seconds, other = timed(lambda: step(contextlib.nullcontext), args.repeats)
    report("fp32, channels-last", base, seconds, abs(other - loss))
    library_step = stepper(untouched)
    library, other = timed(lambda: library_step(library_depthwise_gradient), args.repeats)
    report("  oneDNN depthwise w-grad", base, library, abs(other - loss))
    print(f"  (tap-by-tap depthwise weight gradients on small maps: x{library / seconds:.2f} over oneDNN's kernel)")
    convolution_step = stepper(convolutions)
    library, other = timed(lambda: convolution_step(library_pointwise), args.repeats)
    report("  oneDNN 1x1 convolutions", base, library, abs(other - loss))
    print(f"  (1x1 convolutions as matrix products: x{library / seconds:.2f} over oneDNN's kernel)")
    padded_step = stepper(padded_head)
    library, other = timed(lambda: padded_step(library_token_head), args.repeats)
    report("  library token head, padded", base, library, abs(other - loss))
    print(f"  (token head on real tokens only: x{library / seconds:.2f} over the library's padded forward; "
          f"{int(mask.sum())} of {mask.numel()} positions are real tokens)")
    seconds, other = timed(lambda: step(bf16), args.repeats)
    report("bf16 + channels-last", base, seconds, abs(other - loss))
    if args.compile:
        compiled = copy.deepcopy(model)
        compiled.image_encoder.backbone = torch.compile(compiled.image_encoder.backbone)
        step = stepper(compiled)
        started = time.perf_counter()
        step(contextlib.nullcontext)
        print(f"  (compiling the backbone's training step took {time.perf_counter() - started:.0f} s)")
        seconds, other = timed(lambda: step(contextlib.nullcontext), args.repeats)
        report("torch.compile (backbone)", base, seconds, abs(other - loss))

    # 3. gallery encoding (validation and test)
    print(f"gallery encoding, {args.batch_size * 2} images:")
    model.eval()
    gallery = torch.randint(0, 256, (args.batch_size * 2, 3, 96, 48), dtype=torch.uint8)

    def encode(net: Any, context: Callable[[], contextlib.AbstractContextManager]) -> Any:
        with torch.no_grad(), context():
            return net.encode_images(gallery).float()

    contiguous = contiguous_copy(model)  # the same weights and batch-norm statistics as ``model`` after its steps
    base, reference = timed(lambda: encode(contiguous, contextlib.nullcontext), args.repeats)
    report("fp32, contiguous layout", base, base, None)
    seconds, out = timed(lambda: encode(model, contextlib.nullcontext), args.repeats)
    report("fp32, channels-last", base, seconds, float((out - reference).abs().max()))
    library, out = timed(lambda: encode(model, library_pointwise), args.repeats)
    report("  oneDNN 1x1 convolutions", base, library, float((out - reference).abs().max()))
    print(f"  (1x1 convolutions as matrix products: x{library / seconds:.2f} over oneDNN's kernel)")
    seconds, out = timed(lambda: encode(model, bf16), args.repeats)
    report("bf16 + channels-last", base, seconds, float((out - reference).abs().max()))
    if args.compile:
        backbone = model.image_encoder.backbone
        model.image_encoder.backbone = torch.compile(backbone)
        seconds, out = timed(lambda: encode(model, contextlib.nullcontext), args.repeats)
        report("torch.compile (backbone)", base, seconds, float((out - reference).abs().max()))
        model.image_encoder.backbone = backbone


if __name__ == "__main__":
    main()
