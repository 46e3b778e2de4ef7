"""Which of a checkpoint's tensors fit a model: ``init_from`` (copy those that match) and the strict check of a
checkpoint loaded into its method (explain those that do not)."""
from __future__ import annotations

from pathlib import Path

import torch


def matching_tensors(path: str | Path, own: dict[str, torch.Tensor], model: str) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of checkpoint (or state dict) ``path`` whose name and shape match ``own`` (a ``model``'s state
    dict), read with ``weights_only=True``, and a one-line account (loaded, new, unused, reshaped); a
    :class:`ValueError` when the file is unreadable or none matches (``init_from``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  torch raises many types for an unreadable or unsafe file
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(f"init_from {path}: not a readable checkpoint or state dict ({reason})") from None
    theirs = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(theirs, dict):
        raise ValueError(f"init_from {path}: expected a checkpoint or a state dict (name -> tensor), got "
                         f"{type(checkpoint).__name__}")
    loadable = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
    if not loadable:
        raise ValueError(f"{path}: none of its {len(theirs)} tensors matches a parameter of {model} "
                         f"by name and shape (e.g. {sorted(theirs)[:3]}); is it a checkpoint of this method?")
    reshaped = sorted(k for k in theirs if k in own and own[k].shape != theirs[k].shape)
    fresh = sorted(k for k in own if k not in loadable)
    summary = (f"{len(loadable)} tensors loaded; {len(fresh)} of the model's are new (e.g. {fresh[:3]}); "
               f"{len(theirs) - len(loadable)} of the checkpoint's unused (e.g. {sorted(set(theirs) - set(loadable))[:3]})"
               + (f"; shape mismatch: {reshaped[:5]}" if reshaped else ""))
    return loadable, summary


def checkpoint_mismatch(theirs: dict[str, torch.Tensor], own: dict[str, torch.Tensor], model: str) -> str | None:
    """A one-paragraph explanation when a checkpoint's tensors do not fit the model (missing, unexpected, reshaped
    keys, a few of each), or ``None`` when they do."""
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    reshaped = sorted(k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k].shape))
    if not (missing or unexpected or reshaped):
        return None
    parts = [f"{len(missing)} of the model's tensors are not in it (e.g. {missing[:4]})" if missing else "",
             f"{len(unexpected)} of its tensors are not in the model (e.g. {unexpected[:4]})" if unexpected else "",
             "shapes differ: " + ", ".join(f"{k} checkpoint {tuple(theirs[k].shape)} vs model {tuple(own[k].shape)}"
                                            for k in reshaped[:4]) if reshaped else ""]
    return (f"the checkpoint does not fit this {model} ({'; '.join(p for p in parts if p)}): is it a checkpoint of "
            "another method or of another configuration (sizes, layers)? To start from it anyway, use "
            "--model.init_args.init_from (copies the tensors that match)")
