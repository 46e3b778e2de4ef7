"""Optimisers and learning-rate schedules, declared per group of a method's parameters.

A method trains with one or more :class:`OptimizerGroup` s, each: which parameters (module-name prefixes; or, for
one group without prefixes, every other trainable parameter, split the method's way), an optimiser of
:data:`~xsearch.registry.OPTIMIZERS` with its arguments, a schedule of :data:`~xsearch.registry.SCHEDULES` counted
in ``step`` s or ``epoch`` s, and an optional clip of the group's gradient norm before the step.

:func:`build_optimization` turns them into what Lightning's automatic optimisation takes: one optimiser (a
:class:`MultiOptimizer` stepping one torch optimiser per group when there are several) and one
:class:`GroupSchedule` per interval, each setting the learning rate of its own param groups only. Checkpoints keep
every optimiser's state and every schedule's count.
"""
from __future__ import annotations

import inspect
import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from xsearch.registry import OPTIMIZERS, SCHEDULES

__all__ = ["GroupSchedule", "Horizon", "MultiOptimizer", "Optimization", "OptimizerGroup", "build_optimization",
           "accepted_arguments"]

Factor = Callable[[int], float]
"""A schedule: the learning-rate multiplier after ``count`` scheduler steps (0 = the start)."""

INTERVALS: tuple[str, ...] = ("step", "epoch")


# -- optimisers ------------------------------------------------------------------------
def _fusable(groups: list[dict[str, Any]]) -> bool:
    """Whether every parameter sits on a device fused Adam(W) supports (CPU, CUDA)."""
    return all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])


@OPTIMIZERS.register("adam")
def adam(groups: list[dict[str, Any]], lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, fused: bool | None = None) -> Optimizer:
    """``torch.optim.Adam`` (weight decay added to the gradient); fused unless a parameter is on another device."""
    return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                            fused=_fusable(groups) if fused is None else fused)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict[str, Any]], lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, fused: bool | None = None) -> Optimizer:
    """``torch.optim.AdamW`` (decoupled weight decay); fused unless a parameter is on another device."""
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             fused=_fusable(groups) if fused is None else fused)


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict[str, Any]], lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False) -> Optimizer:
    """``torch.optim.SGD`` (torch's defaults: no momentum, no weight decay)."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def accepted_arguments(function: Callable, candidates: dict[str, Any]) -> dict[str, Any]:
    """The ``candidates`` that ``function`` takes as keyword arguments."""
    parameters = inspect.signature(function).parameters
    return {name: value for name, value in candidates.items() if name in parameters}


class MultiOptimizer(Optimizer):
    """Several torch optimisers stepped as one, for Lightning's automatic optimisation (which takes one).

    ``param_groups`` are theirs, concatenated (the same dicts: schedules and gradient clipping reach them), ``state``
    is theirs merged, ``state_dict`` lists theirs. ``step(closure)`` runs the closure once, then steps each."""

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        self.optimizers = list(optimizers)
        super().__init__([group for optimizer in self.optimizers for group in optimizer.param_groups], {})

    @property
    def state(self) -> dict[torch.Tensor, Any]:  # type: ignore[override]
        """Per-parameter state of every optimiser (its values are theirs, so in-place edits reach them)."""
        return {p: value for optimizer in self.optimizers for p, value in optimizer.state.items()}

    @state.setter
    def state(self, value: Any) -> None:
        if value:  # torch's initialiser sets an empty one
            raise AttributeError("a MultiOptimizer's state is its optimisers'; set theirs")

    def _link(self) -> None:
        """Point ``param_groups`` at the optimisers' current dicts (in place: wrappers such as Lightning's share it)."""
        self.param_groups[:] = [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        states = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            found = f"{len(states)} optimisers' states" if isinstance(states, list) else "the state of one optimiser"
            raise ValueError(f"this run steps {len(self.optimizers)} optimisers (optimizer_groups) but the checkpoint "
                             f"holds {found}: was it written with other optimizer_groups?")
        for optimizer, state in zip(self.optimizers, states):
            optimizer.load_state_dict(state)
        self._link()  # torch's load_state_dict gives each optimiser new param-group dicts


# -- schedules -------------------------------------------------------------------------
@dataclass(frozen=True)
class Horizon:
    """How often a schedule is stepped: ``total`` times in the run, ``per_epoch`` times per training epoch."""

    total: int
    per_epoch: float


def _one(count: int) -> float:
    return 1.0


@SCHEDULES.register("constant")
def constant(horizon: Horizon) -> Factor:
    """1 throughout."""
    return _one


def _warmup_then(horizon: Horizon, warmup_epochs: float, after: Callable[[float], float]) -> Factor:
    """Linear from 0.1 to 1 over ``warmup_epochs`` (at most ``total - 1`` counts), then ``after(progress)`` with
    progress from 0 (end of warm-up) to 1 (the last count)."""
    total = horizon.total
    warmup = min(total - 1, int(warmup_epochs * horizon.per_epoch))

    def factor(count: int) -> float:
        if count < warmup:
            return 0.1 + 0.9 * count / max(1, warmup)
        return after((count - warmup) / max(1, total - warmup))

    return factor


def _flat(progress: float) -> float:
    return 1.0


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(horizon: Horizon, warmup_epochs: float = 0.0) -> Factor:
    """Linear warm-up from 0.1 over ``warmup_epochs``, then a cosine from 1 down to 0 at the last count."""
    return _warmup_then(horizon, warmup_epochs, _cosine)


@SCHEDULES.register("warmup_constant")
def warmup_constant(horizon: Horizon, warmup_epochs: float = 0.0) -> Factor:
    """Linear warm-up from 0.1 over ``warmup_epochs``, then 1."""
    return _warmup_then(horizon, warmup_epochs, _flat)


@SCHEDULES.register("step")
def step_decay(horizon: Horizon, step_size: int, gamma: float) -> Factor:
    """``gamma ** (count // step_size)`` (torch's ``StepLR``)."""
    return lambda count: gamma ** (count // step_size)


@SCHEDULES.register("multistep")
def multistep(horizon: Horizon, milestones: Sequence[int], gamma: float) -> Factor:
    """``gamma ** (milestones reached)`` (torch's ``MultiStepLR``: at milestone ``m`` the rate drops for count ``m``)."""
    ordered = sorted(int(m) for m in milestones)
    return lambda count: gamma ** bisect_right(ordered, count)


@SCHEDULES.register("exponential")
def exponential(horizon: Horizon, gamma: float) -> Factor:
    """``gamma ** count`` (torch's ``ExponentialLR``)."""
    return lambda count: gamma ** count


class GroupSchedule(LRScheduler):
    """Sets ``lr = initial_lr x factor(count)`` on the param groups of ``optimizer`` with a factor (by index) and
    leaves the others as they are (another schedule's)."""

    def __init__(self, optimizer: Optimizer, factors: dict[int, Factor], last_epoch: int = -1) -> None:
        self.factors = dict(factors)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        return [base * self.factors[i](self.last_epoch) if i in self.factors else group["lr"]
                for i, (base, group) in enumerate(zip(self.base_lrs, groups))]

    def state_dict(self) -> dict[str, Any]:
        """The count and rates (the factors are rebuilt from the configuration)."""
        return {key: value for key, value in super().state_dict().items() if key != "factors"}


# -- declarations ----------------------------------------------------------------------
@dataclass
class OptimizerGroup:
    """One optimiser over some parameters of a method, and its learning-rate schedule.

    Args:
        name: the group's name (errors; the ``name`` of its param group).
        optimizer: a name in :data:`~xsearch.registry.OPTIMIZERS`; ``optimizer_args`` its arguments (``lr``...).
        modules: module-name prefixes (``text_encoder``, ``image_head``...) whose trainable parameters the group
            takes, at the ``lr`` and ``weight_decay`` of ``optimizer_args``. ``None`` (at most one group): every
            trainable parameter no other group takes, split as the method's ``parameter_groups`` (each part with
            its own ``lr`` and ``weight_decay``, from the method's ``lr``, ``new_module_lr_factor``,
            ``bias_lr_factor`` and ``weight_decay``, which override those of ``optimizer_args``).
        schedule: a name in :data:`~xsearch.registry.SCHEDULES`; ``schedule_args`` its arguments.
        interval: the schedule counts optimiser ``step`` s or training ``epoch`` s.
        clip_grad_norm: the group's gradient norm is clipped to this before every step (``None``: no clip).
    """

    name: str
    optimizer: str
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    modules: list[str] | None = None
    schedule: str = "constant"
    schedule_args: dict[str, Any] = field(default_factory=dict)
    interval: Literal["step", "epoch"] = "epoch"
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        OPTIMIZERS.get(self.optimizer)  # KeyError naming the registered ones
        SCHEDULES.get(self.schedule)
        if self.interval not in INTERVALS:
            raise ValueError(f"optimizer group {self.name!r}: interval must be 'step' or 'epoch', got {self.interval!r}")
        if self.modules is not None and (isinstance(self.modules, str) or not self.modules):
            raise ValueError(f"optimizer group {self.name!r}: modules must be a non-empty list of module names")

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> OptimizerGroup:
        """A group from its configuration mapping (the keys are the fields)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"optimizer group {entry.get('name', '?')!r}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**entry)


@dataclass
class Optimization:
    """What a method trains with: one optimiser, ``(schedule, interval)`` pairs, ``(parameters, max_norm)`` clips."""

    optimizer: Optimizer
    schedules: list[tuple[GroupSchedule, str]]
    clips: list[tuple[list[nn.Parameter], float]]

    def lightning(self) -> tuple[list[Optimizer], list[dict[str, Any]]]:
        """``configure_optimizers``' answer: ``([optimizer], [{"scheduler", "interval"}, ...])``."""
        return [self.optimizer], [{"scheduler": schedule, "interval": interval} for schedule, interval in self.schedules]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def claim_parameters(named: list[tuple[str, nn.Parameter]], groups: Sequence[OptimizerGroup]) -> list[list[nn.Parameter]]:
    """The trainable parameters of each group with ``modules`` (``[]`` for the catch-all group), from the
    ``(name, parameter)`` list of a module; raises on a prefix naming nothing, a parameter claimed twice, or
    trainable parameters left over without a catch-all group."""
    owner: dict[str, str] = {}
    claimed: list[list[nn.Parameter]] = []
    for group in groups:
        params = []
        for prefix in group.modules or []:
            matches = [(n, p) for n, p in named if _under(n, prefix)]
            if not matches:
                tops = sorted({n.split(".")[0] for n, _ in named})
                raise ValueError(f"optimizer group {group.name!r}: no parameter under {prefix!r}; the model's modules: {tops}")
            for n, p in matches:
                if not p.requires_grad:
                    continue
                if n in owner:
                    raise ValueError(f"parameter {n} is in optimizer groups {owner[n]!r} and {group.name!r}")
                owner[n] = group.name
                params.append(p)
        claimed.append(params)
    catch_all = [g.name for g in groups if g.modules is None]
    if len(catch_all) > 1:
        raise ValueError(f"optimizer groups {catch_all} all take the remaining parameters (no modules); one may")
    rest = [n for n, p in named if p.requires_grad and n not in owner]
    if rest and not catch_all:
        raise ValueError(f"{len(rest)} trainable parameters are in no optimizer group (e.g. {rest[:4]}); add their "
                         "modules to a group, or a group without modules for the rest")
    return claimed


def _horizons(steps: int, epochs: int) -> dict[str, Horizon]:
    total = max(1, int(steps))
    epochs = max(1, int(epochs))
    return {"step": Horizon(total, total / epochs), "epoch": Horizon(epochs, 1.0)}


def _build(group: OptimizerGroup, what: str, build: Callable[..., Any], first: Any, first_name: str,
           args: dict[str, Any]) -> Any:
    """``build(first, **args)``; a keyword ``build`` does not take is a :class:`ValueError` naming ``group``, ``what``
    and the keywords it takes."""
    try:
        return build(first, **args)
    except TypeError as error:
        takes = [n for n in inspect.signature(build).parameters if n != first_name]
        raise ValueError(f"optimizer group {group.name!r}: {what} takes {takes} ({error})") from None


def _optimizer(group: OptimizerGroup, param_groups: list[dict[str, Any]]) -> Optimizer:
    return _build(group, group.optimizer, OPTIMIZERS.get(group.optimizer), param_groups, "groups", group.optimizer_args)


def _factor(group: OptimizerGroup, horizon: Horizon) -> Factor:
    return _build(group, f"schedule {group.schedule}", SCHEDULES.get(group.schedule), horizon, "horizon",
                  group.schedule_args)


def build_optimization(module: nn.Module, groups: Sequence[OptimizerGroup],
                       remaining: Callable[[set[int]], list[dict[str, Any]]], steps: int, epochs: int) -> Optimization:
    """Optimiser, schedules and clips of ``module`` for ``groups``.

    Args:
        module: whose ``named_parameters`` the groups' ``modules`` prefixes select.
        groups: the declarations, in order (one torch optimiser each; groups without parameters are skipped).
        remaining: ids of the parameters no group claims -> their torch param groups (the catch-all group's).
        steps: optimiser steps in the run; epochs: training epochs (the schedules' horizons).
    """
    named = list(module.named_parameters())
    claimed = claim_parameters(named, groups)
    taken = {id(p) for params in claimed for p in params}
    rest = {id(p) for _, p in named if p.requires_grad and id(p) not in taken}
    optimizers, owners, clips = [], [], []
    for group, params in zip(groups, claimed):
        param_groups = [{"params": params, "name": group.name}] if group.modules is not None else remaining(rest)
        param_groups = [g for g in param_groups if g["params"]]
        if not param_groups:
            continue
        optimizers.append(_optimizer(group, param_groups))
        owners.extend([group] * len(param_groups))
        if group.clip_grad_norm is not None:
            clips.append(([p for g in param_groups for p in g["params"]], float(group.clip_grad_norm)))
    if not optimizers:
        raise ValueError("no trainable parameter in any optimizer group")
    optimizer = optimizers[0] if len(optimizers) == 1 else MultiOptimizer(optimizers)
    horizons = _horizons(steps, epochs)
    schedules = []
    for interval in INTERVALS:
        factors = {i: _factor(g, horizons[interval]) for i, g in enumerate(owners) if g.interval == interval}
        if factors:
            schedules.append((GroupSchedule(optimizer, factors), interval))
    return Optimization(optimizer, schedules, clips)


# -- the default: one group of every parameter -------------------------------------------
def default_parameter_groups(module: nn.Module, backbone: Sequence[nn.Module], factors: Sequence[tuple[nn.Module, float]],
                             lr: float, new_module_lr_factor: float, bias_lr_factor: float,
                             weight_decay: float) -> list[dict[str, Any]]:
    """``module``'s trainable parameters as torch param groups: ``backbone`` modules at ``lr``, others at ``lr x
    new_module_lr_factor``, the modules of ``factors`` at ``lr x factor``; biases and 1-d parameters (norms) at ``x
    bias_lr_factor`` without weight decay."""
    in_backbone = {id(p) for m in backbone for p in m.parameters()}
    factor_of = {id(p): factor for m, factor in factors for p in m.parameters()}
    groups: dict[tuple[bool, bool, float], dict[str, Any]] = {}
    for _, param in module.named_parameters():
        if not param.requires_grad:
            continue
        is_backbone, no_decay = id(param) in in_backbone, param.ndim <= 1
        default = 1.0 if is_backbone else new_module_lr_factor
        factor = factor_of.get(id(param), default)
        group = groups.setdefault((is_backbone, no_decay, factor), {
            "params": [],
            "lr": lr * factor * (bias_lr_factor if no_decay else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": f"{'backbone' if is_backbone else 'new'}{'' if factor == default else f'_x{factor:g}'}"
                    f"{'_no_decay' if no_decay else ''}",
        })
        group["params"].append(param)
    return list(groups.values())


def default_group(optimizer: str, lr: float, adam_eps: float, schedule: str, warmup_epochs: float) -> OptimizerGroup:
    """One group of every trainable parameter (``modules=None``: split by the method's ``parameter_groups``) with
    ``optimizer`` at ``lr`` (SGD with momentum 0.9, Adam(W) with ``adam_eps``) and the warm-up + ``schedule``
    (``cosine`` or ``constant``) stepped per optimiser step."""
    legacy = {"lr": lr, "momentum": 0.9, "eps": adam_eps}  # each optimiser takes those it knows
    return OptimizerGroup(name="all", optimizer=optimizer, modules=None, interval="step",
                          optimizer_args=accepted_arguments(OPTIMIZERS.get(optimizer), legacy),
                          schedule=f"warmup_{schedule}", schedule_args={"warmup_epochs": warmup_epochs})


def restricted(groups: list[dict[str, Any]], keep: set[int]) -> list[dict[str, Any]]:
    """``groups`` with only the parameters whose id is in ``keep``."""
    return [{**group, "params": [p for p in group["params"] if id(p) in keep]} for group in groups]
