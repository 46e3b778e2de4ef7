"""Cross-rank helpers for DDP: gather a batch's embeddings with gradients so batch-wise losses see the global batch.

With ``all_gather_with_grad`` a contrastive loss computed on the gathered (W x B, D) embeddings on every rank, then
DDP's gradient averaging, gives exactly the gradient of the same loss on the global batch in one process: each
rank's backward sums the gradients of all W (identical) losses into its own slice, and DDP divides by W (tested
with 2 gloo processes). Without a process group, or with one process, every function returns its input.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes of the default group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each of W ranks -> (W x B, ...) in rank order, differentiable (the local slice keeps its graph and
    receives the other ranks' gradients). Every rank must pass the same shape (``ValueError`` naming them if not)."""
    size = world_size()
    if size == 1:
        return tensor
    shape = torch.tensor(list(tensor.shape), device=tensor.device if dist.get_backend() != "gloo" else "cpu")
    shapes = [torch.zeros_like(shape) for _ in range(size)]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shapes[0]) for s in shapes):
        raise ValueError(f"all_gather_with_grad needs one shape on every rank, got {[tuple(s.tolist()) for s in shapes]} "
                         "(drop_last / an identity sampler with equal batches per rank)")
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) per rank -> (W x B, ...) without gradients (labels, ids)."""
    if world_size() == 1:
        return tensor
    sent = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor  # not every backend gathers bool
    parts = [torch.empty_like(sent) for _ in range(world_size())]
    dist.all_gather(parts, sent.contiguous())
    return torch.cat(parts, dim=0).to(tensor.dtype)


def gather(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor of this rank's batch -> the global batch (rank order): with gradients when it requires them (the
    embeddings of a batch-wise loss), without otherwise (pids, masks). The identity with one process."""
    if world_size() == 1:
        return tensors
    return tuple(all_gather_with_grad(t) if t.requires_grad else all_gather_no_grad(t) for t in tensors)
