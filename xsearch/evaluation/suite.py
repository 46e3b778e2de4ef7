"""A split's evaluation: its protocols and the loaders they read."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from xsearch.evaluation.identity import IdentityRetrieval
from xsearch.evaluation.protocol import EvaluationProtocol, SimilarityFn

__all__ = ["EvaluationSuite"]


class EvaluationSuite:
    """The protocols of one split, and the evaluation loaders they need: one per distinct ``(role, dataset)`` of their
    ``inputs``, in protocol order (a dataset two protocols read in the same role is loaded and encoded once).

    A datamodule gives the suite of a split (``eval_suites[split]``) and its loaders in :attr:`loaders` order; the
    method encodes each batch with the encoder of the loader's :meth:`role` and hands it to :meth:`update`.
    """

    def __init__(self, protocols: Sequence[EvaluationProtocol]) -> None:
        self.protocols = list(protocols)
        self.loaders: list[tuple[str, Any]] = []
        """``(role, dataset)`` of each evaluation loader, in loader order."""
        self._readers: list[list[EvaluationProtocol]] = []
        for protocol in self.protocols:
            for role, dataset in protocol.inputs.items():
                key = next((i for i, (r, d) in enumerate(self.loaders) if r == role and d is dataset), None)
                if key is None:
                    key = len(self.loaders)
                    self.loaders.append((role, dataset))
                    self._readers.append([])
                self._readers[key].append(protocol)

    @classmethod
    def default(cls) -> EvaluationSuite:
        """For loaders given without a datamodule: identity retrieval of loader 0 (queries) against loader 1
        (gallery), positives by pid."""
        return cls([IdentityRetrieval()])

    def role(self, loader: int) -> str:
        """The role of evaluation loader ``loader``."""
        if not 0 <= loader < len(self.loaders):
            raise ValueError(f"unexpected evaluation dataloader {loader}: the datamodule's loaders are "
                             f"{[role for role, _ in self.loaders]}")
        return self.loaders[loader][0]

    def configure(self, ks: Sequence[int], similarity_fn: SimilarityFn, top_k: int = 0,
                  device: torch.device | str | None = None) -> None:
        """Every protocol's :meth:`~xsearch.evaluation.protocol.EvaluationProtocol.configure`, emptied, on
        ``device``."""
        for protocol in self.protocols:
            protocol.reset()
            protocol.configure(ks, similarity_fn, top_k)
            if device is not None:
                protocol.to(device)

    def update(self, loader: int, encoders: Mapping[str, Callable[[dict[str, Any]], Any]], batch: dict[str, Any]) -> None:
        """Encode a batch of loader ``loader`` once, with the encoder of its role (``encoders``: role -> the method's
        encoder), and give the embeddings to each protocol reading it."""
        role = self.role(loader)
        if role not in encoders:
            raise ValueError(f"evaluation role {role!r} has no encoder; the method encodes {sorted(encoders)}")
        embeddings = encoders[role](batch)
        for protocol in self._readers[loader]:
            protocol.update(role, embeddings, batch)

    def compute(self) -> list[tuple[EvaluationProtocol, dict[str, float]]]:
        """Each protocol with its metrics, in protocol order."""
        return [(protocol, protocol.compute()) for protocol in self.protocols]

    def reset(self) -> None:
        for protocol in self.protocols:
            protocol.reset()
