"""A plain, readable training loop, safe checkpoints, and the ``train`` entry point.

- :class:`TrainConfig`: SGD with momentum and weight decay, a linear warm-up then step drops
  (``milestones``, ``gamma``), seed, device (``"auto"``: CUDA when available), AMP (CUDA only,
  a no-op on CPU), evaluation every ``eval_every`` epochs, divergence detection.
- :func:`fit` trains any classifier on an :class:`~graphfilters.data.ImageData`;
  :func:`train` builds the model from a config dict and the data from a name, then calls
  :func:`fit` and writes a checkpoint (the function the command line calls).
- :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`load_model`: checkpoints hold
  only plain types and tensors and are always read with ``torch.load(weights_only=True)``,
  so loading a file never runs code from it.

History. :func:`fit` returns (and checkpoints store) a list with one dict per epoch::

    {"epoch": 3, "step": 63, "steps": 21, "lr": 0.1, "train_loss": 0.41, "train_acc": 0.88,
     "grad_norm": 1.7, "test_loss": 0.35, "test_acc": 0.91, "time_s": 4.2, "diverged": False}

Per-step log. :attr:`TrainResult.steps` (and ``checkpoint["extra"]["step_log"]``) holds one
list per quantity, one entry per optimizer step (also the step that diverged)::

    {"step": [1, 2, ...], "epoch": [...], "lr": [...], "loss": [...],
     "grad_norm": [...],   # global 2-norm of all gradients (before clipping)
     "grad_max": [...]}    # largest 2-norm of one parameter tensor's gradient

``step`` counts optimizer steps since the start, ``steps`` those of the epoch, ``lr`` is the
learning rate of the epoch's last step. ``test_loss``/``test_acc`` are ``None`` in epochs
without evaluation. ``grad_norm`` is the mean over the epoch's steps of the total gradient
2-norm (before clipping). When the loss becomes NaN
or Inf (or exceeds ``max_loss``, or ``max_loss_factor`` times the first step's loss), or the
gradient norm is not finite, training stops and a last entry records it::

    {"epoch": 1, "step": 7, "diverged": True, "reason": "loss is nan at epoch 1, step 7", ...}

Multi-GPU. Launched by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment), the loop
initializes ``torch.distributed`` (NCCL on CUDA, Gloo on CPU), wraps the model in
``DistributedDataParallel``, shards the training set with ``DistributedSampler`` and averages
the logged metrics over processes; only rank 0 shows progress and writes files. Without those
variables nothing distributed is touched.

Checkpoint format (a dict, ``torch.save``-d)::

    {"format": "graphfilters-checkpoint", "version": 1,
     "model_config": {...},        # PreResNet.config: build_model(model_config) rebuilds it
     "state_dict": {name: tensor},  # on CPU
     "train_config": {...} | None, "history": [...], "data": {...} | None,
     "extra": {...}, "torch_version": "2.13.0", "created": "2025-01-01T00:00:00"}

Examples
--------
>>> from graphfilters.training import TrainConfig, train
>>> cfg = TrainConfig(epochs=1, batch_size=64, max_steps=2, progress=False)
>>> result = train({"depth": 8, "width": 4}, cfg,
...                data={"name": "long_range", "n_train": 64, "n_test": 32, "size": 16})
>>> len(result.history), result.diverged
(1, False)
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import logging
import math
import os
import pickle
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from graphfilters import _validate as V
from graphfilters.data import ImageData, get_dataset
from graphfilters.models import BlockFactory, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DistributedContext",
    "example_checkpoint",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "fit",
    "init_distributed",
    "learning_rate",
    "load_checkpoint",
    "load_model",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "train",
]

logger = logging.getLogger(__name__)

#: Value of the ``"format"`` key of every checkpoint written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = "graphfilters-checkpoint"
#: Current checkpoint version; :func:`load_checkpoint` reads versions up to this one.
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig(V.DeclaredFields):
    """Hyper-parameters of :func:`fit`.

    Attributes
    ----------
    epochs : int
        Number of epochs.
    batch_size : int
        Training batch size (per process under DDP).
    lr, momentum, weight_decay, nesterov
        SGD settings (weight decay on all parameters, as in the official code).
    warmup_epochs : float
        Linear warm-up length in epochs (per step, from ``warmup_start_factor · lr`` to
        ``lr``); 0 disables it.
    warmup_start_factor : float
        Fraction of ``lr`` at the first step of the warm-up.
    milestones : tuple of float
        Epochs (counted from the start of training, warm-up included) after which the
        learning rate is multiplied by ``gamma``.
    gamma : float
        Step factor.
    seed : int
        Seeds Python, NumPy and torch (model initialization and shuffling).
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    amp : bool
        Mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU.
    augment : bool
        Random crop (padding 4) and, where the data allow it, horizontal flips.
    eval_every : int
        Evaluate on the test set every ``eval_every`` epochs (and after the last one).
    max_steps : int, optional
        Stop after this many optimizer steps (quick runs and tests).
    grad_clip : float, optional
        Clip the total gradient norm to this value.
    max_loss : float, optional
        Also treat a finite training loss above this value as divergence (default: only
        NaN/Inf).
    max_loss_factor : float, optional
        Also treat a training loss above ``max_loss_factor`` times the first step's loss as
        divergence (an exploding loss; e.g. 10).
    log_steps : bool
        Record the loss, learning rate, global and largest per-tensor gradient norm of every
        step (:attr:`TrainResult.steps`; stored in checkpoints). Turning it off removes one
        small device-to-host copy per epoch, nothing per step.
    num_workers : int
        DataLoader workers.
    progress : bool
        Show a tqdm progress bar and per-epoch lines (rank 0 only).

    Examples
    --------
    >>> cfg = TrainConfig(epochs=20, warmup_epochs=2, milestones=(10, 15))
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> TrainConfig.paper_cifar().milestones
    (160, 260)
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    augment: bool = False
    eval_every: int = 1
    max_steps: int | None = None
    grad_clip: float | None = None
    max_loss: float | None = None
    max_loss_factor: float | None = None
    log_steps: bool = True
    num_workers: int = 0
    progress: bool = True

    constraints: ClassVar[dict[str, list[Any]]] = {
        "epochs": [V.POS_INT], "batch_size": [V.POS_INT], "lr": [V.NONNEG_REAL],
        "momentum": [V.NONNEG_REAL], "weight_decay": [V.NONNEG_REAL], "nesterov": ["boolean"],
        "warmup_epochs": [V.NONNEG_REAL], "warmup_start_factor": [V.NONNEG_REAL],
        "gamma": [V.NONNEG_REAL], "seed": [V.Interval(V.Integral, None, None)],
        "amp": ["boolean"], "augment": ["boolean"], "eval_every": [V.POS_INT],
        "max_steps": [V.POS_INT, None], "grad_clip": [V.POS_REAL, None],
        "max_loss": [V.REAL, None],
        "max_loss_factor": [V.Interval(V.Real, 1, None, closed="neither"), None],
        "log_steps": ["boolean"], "num_workers": [V.NONNEG_INT], "progress": ["boolean"],
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        self.milestones = tuple(self.milestones)
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    @classmethod
    def paper_cifar(cls, **overrides: Any) -> TrainConfig:
        """The CIFAR recipe of the official code: batch 128, lr 0.1, 10 warm-up epochs, 300
        more with ×0.1 drops at 150 and 250 (shifted by the warm-up), augmentation,
        evaluation every 5 epochs."""
        base = dict(epochs=310, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
                    warmup_epochs=10, milestones=(160, 260), gamma=0.1, augment=True,
                    eval_every=5)
        base.update(overrides)
        return cls(**base)


def learning_rate(config: TrainConfig, progress: float) -> float:
    """Learning rate after ``progress`` epochs (fractional) of training.

    Linear warm-up over ``warmup_epochs`` from ``warmup_start_factor · lr`` to ``lr``, then
    ``lr · gamma^m`` where ``m`` is the number of milestones ``<= progress``.

    Examples
    --------
    >>> cfg = TrainConfig(lr=0.1, warmup_epochs=2, warmup_start_factor=0.0, milestones=(5,))
    >>> [round(learning_rate(cfg, e), 4) for e in (0, 1, 2, 4.9, 5)]
    [0.0, 0.05, 0.1, 0.1, 0.01]
    """
    if config.warmup_epochs > 0 and progress < config.warmup_epochs:
        f0 = config.warmup_start_factor
        return config.lr * (f0 + (1.0 - f0) * progress / config.warmup_epochs)
    drops = sum(progress >= m for m in config.milestones)
    return config.lr * config.gamma**drops


# --------------------------------------------------------------------------------------------
# Devices, seeds, distributed
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds code that uses the global RNG
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """Turn ``"auto"``/``"cuda"``/``"cpu"``/``"cuda:1"`` into a :class:`torch.device`.

    ``"auto"`` is ``cuda:<local_rank>`` when CUDA is available, else ``cpu``.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device(
            "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'"
        )
    if device == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(device)


@dataclass
class DistributedContext:
    """Where this process stands in a ``torchrun`` launch (rank 0 of 1 when not launched)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def active(self) -> bool:
        """Whether a process group is in use."""
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0: shows progress and writes files."""
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        if self.initialized_here and self.active:
            torch.distributed.destroy_process_group()
            self.initialized_here = False


def init_distributed() -> DistributedContext:
    """Join the ``torchrun`` process group if ``RANK`` and ``WORLD_SIZE`` are set.

    Uses NCCL when CUDA is available, Gloo otherwise. Without those variables (a plain
    ``python`` run) nothing is initialized. An already initialized group is reused.

    Examples
    --------
    >>> ctx = init_distributed()  # a plain process
    >>> ctx.rank, ctx.world_size
    (0, 1)
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(),
                                  int(os.environ.get("LOCAL_RANK", 0)))
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("RANK/WORLD_SIZE are set but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, True)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`fit` and :func:`train` return.

    Attributes
    ----------
    model : torch.nn.Module
        The trained model (unwrapped from DDP), in eval mode, on the training device.
    history : list of dict
        One entry per epoch (see the module docstring), plus a divergence entry if any.
    diverged : bool
    divergence : dict or None
        The divergence entry (``reason``, ``epoch``, ``step``, ``loss``).
    checkpoint : pathlib.Path or None
        Where the checkpoint was written.
    steps : dict of list
        The per-step log (see the module docstring); empty lists with ``log_steps=False``.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    diverged: bool = False
    divergence: dict[str, Any] | None = None
    checkpoint: Path | None = None
    data: dict[str, Any] | None = field(default=None, repr=False)
    steps: dict[str, list] = field(default_factory=dict, repr=False)

    @property
    def test_accuracy(self) -> float | None:
        """The last evaluated test accuracy (``None`` if never evaluated)."""
        for rec in reversed(self.history):
            if rec.get("test_acc") is not None:
                return rec["test_acc"]
        return None


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str | None = None,
             amp: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning logits ``(B, num_classes)``; put in eval mode (and left so).
    loader : DataLoader
        Yields ``(x, y)`` batches.
    device : torch.device or str, optional
        Default: the device of the model's first parameter.
    amp : bool
        float16 autocast (CUDA only).

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float, "n": int}``.

    Examples
    --------
    >>> from graphfilters.data import long_range_task
    >>> from graphfilters.models import PreResNet
    >>> data = long_range_task(n_train=8, n_test=8, size=16)
    >>> out = evaluate(PreResNet(depth=8, width=4, num_classes=2, in_channels=1),
    ...                data.loaders(batch_size=4)[1])
    >>> out["n"]
    8
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16,
                            enabled=amp and device.type == "cuda"):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        n += y.shape[0]
    return {"loss": float(total_loss) / max(n, 1), "accuracy": float(correct) / max(n, 1),
            "n": n}


def _set_sampler_epoch(loader: DataLoader, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    for candidate in (sampler, getattr(sampler, "sampler", None)):
        if hasattr(candidate, "set_epoch"):
            candidate.set_epoch(epoch)


def fit(
    model: nn.Module,
    data: ImageData,
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with SGD; evaluate, detect divergence, checkpoint.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier ``(B, C, H, W) -> (B, num_classes)``; moved to the training device.
    data : ImageData
        Training and test sets (see :mod:`graphfilters.data`).
    config : TrainConfig, optional
        Default ``TrainConfig()``.
    out : path, optional
        Write a checkpoint there at the end (also after a divergence: its weights then hold
        NaN/Inf; the history says so) and the history as JSON next to it (``.json``).
    model_config : mapping, optional
        Config that rebuilds the model; default ``model.config``. Needed for ``out``.

    Returns
    -------
    TrainResult

    Shapes
    ------
    - batches: ``x (B, C, H, W)``, ``y (B,)``; model output ``(B, num_classes)``

    Examples
    --------
    >>> from graphfilters.data import long_range_task
    >>> from graphfilters.models import PreResNet
    >>> data = long_range_task(n_train=32, n_test=16, size=16)
    >>> model = PreResNet(depth=8, width=4, num_classes=2, in_channels=1)
    >>> res = fit(model, data, TrainConfig(epochs=2, batch_size=16, progress=False))
    >>> [r["epoch"] for r in res.history], res.history[-1]["steps"]
    ([1, 2], 2)
    """
    config = config or TrainConfig()
    ctx = init_distributed()
    try:
        return _fit(model, data, config, ctx, out, model_config)
    finally:
        ctx.close()


def _fit(model: nn.Module, data: ImageData, config: TrainConfig, ctx: DistributedContext,
         out: str | os.PathLike | None, model_config: Mapping[str, Any] | None) -> TrainResult:
    device = resolve_device(config.device, ctx.local_rank)
    if model_config is None:
        model_config = getattr(_unwrap(model), "config", None)
    if out is not None and model_config is None:
        raise ValueError("fit(out=...) needs model_config= (the dict that rebuilds the model) "
                         "for a model without a .config attribute")
    model = model.to(device)
    net: nn.Module = model
    if ctx.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_loader, test_loader = data.loaders(
        batch_size=config.batch_size, augment=config.augment, seed=config.seed,
        num_workers=config.num_workers, distributed=ctx.active,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    use_amp = bool(config.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    steps_per_epoch = max(len(train_loader), 1)
    show = config.progress and ctx.is_main
    history: list[dict[str, Any]] = []
    divergence: dict[str, Any] | None = None
    step = 0
    params = [p for p in model.parameters() if p.requires_grad]
    clip = config.grad_clip if config.grad_clip is not None else math.inf
    step_log: dict[str, list] = {k: [] for k in _STEP_KEYS}
    first_loss: float | None = None

    for epoch in range(1, config.epochs + 1):
        net.train()
        _set_sampler_epoch(train_loader, epoch)
        t0 = time.perf_counter()
        # loss sum, correct, samples, grad-norm sum, steps
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        lr = learning_rate(config, epoch - 1)
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{config.epochs}", disable=not show,
                   leave=False, dynamic_ncols=True)
        epoch_log: list[Tensor] = []  # per step: (loss, grad norm, largest tensor grad norm)
        epoch_lr: list[float] = []
        for i, (x, y) in enumerate(bar):
            lr = learning_rate(config, epoch - 1 + i / steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            forward_error = None
            try:
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    logits = net(x)
                    loss = F.cross_entropy(logits.float(), y)
            except ValueError as exc:  # blocks refuse non-finite inputs: a diverged model
                if "NaN or Inf" not in str(exc) and all(
                        bool(torch.isfinite(p).all()) for p in params):
                    raise
                forward_error = str(exc).split(";")[0]
                loss = torch.full((), math.nan, device=device)
            loss_value = float(loss.detach())
            if first_loss is None:
                first_loss = loss_value
            reason = _divergence_reason(loss_value, config.max_loss)
            if forward_error is not None:
                reason = f"forward pass hit non-finite values ({forward_error})"
            if (reason is None and config.max_loss_factor is not None
                    and loss_value > config.max_loss_factor * first_loss):
                reason = (f"loss {loss_value:.4g} exceeds max_loss_factor="
                          f"{config.max_loss_factor:g} x the first loss {first_loss:.4g}")
            if ctx.active:
                flag = torch.tensor([1.0 if reason else 0.0], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                if flag.item() > 0 and reason is None:
                    reason = "loss diverged on another process"
            if reason is not None:
                divergence = {"epoch": epoch, "step": step + 1, "diverged": True,
                              "reason": f"{reason} at epoch {epoch}, step {step + 1}",
                              "loss": loss_value, "lr": lr}
                if config.log_steps:
                    nan = torch.full((), math.nan, dtype=torch.float64, device=device)
                    epoch_log.append(torch.stack([loss.detach().double(), nan, nan]))
                    epoch_lr.append(lr)
                break
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if config.log_steps:
                grads = [p.grad for p in params if p.grad is not None]
                grad_max = (torch.stack([torch.linalg.vector_norm(g.detach()).double()
                                         for g in grads]).max() if grads
                            else torch.zeros((), dtype=torch.float64, device=device))
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if config.log_steps:
                epoch_log.append(torch.stack([loss.detach().double(),
                                              grad_norm.detach().double(), grad_max]))
                epoch_lr.append(lr)
            if scaler is not None:
                scaler.step(optimizer)  # skips the step itself if the norm is inf/nan
                scaler.update()
            else:
                if not torch.isfinite(grad_norm):
                    divergence = {"epoch": epoch, "step": step + 1, "diverged": True,
                                  "reason": f"gradient norm is {float(grad_norm)} at epoch "
                                            f"{epoch}, step {step + 1}",
                                  "loss": loss_value, "lr": lr}
                    break
                optimizer.step()
            step += 1
            batch = y.shape[0]
            gn = grad_norm.detach().double()
            sums += torch.stack([
                loss.detach().double() * batch,
                (logits.detach().argmax(1) == y).sum().double(),
                torch.tensor(float(batch), dtype=torch.float64, device=device),
                gn if torch.isfinite(gn) else torch.zeros_like(gn),
                torch.ones((), dtype=torch.float64, device=device),
            ])
            if show and (i % 10 == 0 or i + 1 == steps_per_epoch):
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}")
            if config.max_steps is not None and step >= config.max_steps:
                break
        bar.close()
        if epoch_log:
            rows = torch.stack(epoch_log).cpu().tolist()
            first = len(step_log["step"]) + 1
            step_log["step"] += list(range(first, first + len(rows)))
            step_log["epoch"] += [epoch] * len(rows)
            step_log["lr"] += epoch_lr
            for j, key in enumerate(("loss", "grad_norm", "grad_max")):
                step_log[key] += [r[j] for r in rows]
        if ctx.active:
            torch.distributed.all_reduce(sums)
            sums[3:] /= ctx.world_size  # grad norms and step counts: mean over processes
        loss_sum, correct, count, gn_sum, n_steps = sums.tolist()
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "steps": int(n_steps),
            "lr": lr,
            "train_loss": loss_sum / count if count else math.nan,
            "train_acc": correct / count if count else math.nan,
            "grad_norm": gn_sum / n_steps if n_steps else math.nan,
            "test_loss": None,
            "test_acc": None,
            "time_s": time.perf_counter() - t0,
            "diverged": False,
        }
        last = epoch == config.epochs or (
            config.max_steps is not None and step >= config.max_steps)
        if divergence is None and (epoch % config.eval_every == 0 or last):
            try:
                metrics = evaluate(model, test_loader, device, amp=use_amp)
                record["test_loss"], record["test_acc"] = metrics["loss"], metrics["accuracy"]
            except ValueError as exc:   # eval-mode statistics (BN running stats) overflowed
                if "NaN or Inf" not in str(exc):
                    raise
                divergence = {"epoch": epoch, "step": step, "diverged": True,
                              "reason": "evaluation hit non-finite values "
                                        f"({str(exc).split(';')[0]}) at epoch {epoch}, "
                                        f"step {step}", "loss": math.nan}
        if divergence is not None:
            if count:
                history.append(record)
            divergence["time_s"] = record["time_s"]
            history.append(divergence)
            if show:
                tqdm.write(f"diverged: {divergence['reason']}")
            logger.warning("training diverged: %s", divergence["reason"])
            break
        history.append(record)
        line = _format_record(record)
        logger.info(line)
        if show:
            tqdm.write(line)
        if last:
            break

    model.eval()
    result = TrainResult(model=model, history=history, diverged=divergence is not None,
                         divergence=divergence, data=data.describe(), steps=step_log)
    if out is not None and ctx.is_main:
        result.checkpoint = save_checkpoint(out, model, model_config, history,
                                            train_config=config, data=data.describe(),
                                            extra={"step_log": step_log})
    if ctx.active:
        torch.distributed.barrier()
        # the DDP reducer (and any reference cycle holding it) goes before fit() destroys the
        # process group: a reducer outliving its group can abort the process at exit
        del net
        gc.collect()
    return result


#: Keys of the per-step log (:attr:`TrainResult.steps`).
_STEP_KEYS = ("step", "epoch", "lr", "loss", "grad_norm", "grad_max")


def _divergence_reason(loss: float, max_loss: float | None) -> str | None:
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if max_loss is not None and loss > max_loss:
        return f"loss {loss:.4g} exceeds max_loss={max_loss:g}"
    return None


def _format_record(r: Mapping[str, Any]) -> str:
    text = (f"epoch {r['epoch']:>3}  lr {r['lr']:.4g}  loss {r['train_loss']:.4f}  "
            f"acc {r['train_acc']:.4f}  |g| {r['grad_norm']:.3g}")
    if r.get("test_acc") is not None:
        text += f"  test_loss {r['test_loss']:.4f}  test_acc {r['test_acc']:.4f}"
    return text + f"  ({r['time_s']:.1f} s)"




@V.validate_params(
    {"model_config": [V.MAPPING, V.MODULE],
     "train_config": [V.InstanceOf(TrainConfig), V.MAPPING, None],
     "data": V.declared(get_dataset, "spec"), "out": [V.PATH, None],
     "block_factory": V.declared(build_model, "block_factory")},
    valid=lambda: {"model_config": {"depth": 8, "width": 1},
                   "train_config": {"epochs": 1, "max_steps": 1, "progress": False,
                                    "device": "cpu", "log_steps": False},
                   "data": {"name": "long_range", "n_train": 2, "n_test": 2, "size": 8}},
)
def train(
    model_config: Mapping[str, Any] | nn.Module,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
    data: ImageData | str | Mapping[str, Any] = "digits",
    out: str | os.PathLike | None = None,
    *,
    block_factory: BlockFactory | None = None,
) -> TrainResult:
    """Build a model and a data set from plain values, train, and write a checkpoint.

    Parameters
    ----------
    model_config : mapping or torch.nn.Module
        A :func:`~graphfilters.models.build_model` config such as
        ``{"depth": 20, "block": "snl"}`` (``arch`` defaults to ``"preresnet"``;
        ``num_classes`` and ``in_channels`` default to the data's), or a model with a
        ``config`` attribute.
    train_config : TrainConfig or mapping, optional
        Default ``TrainConfig()``.
    data : ImageData, str or mapping
        Passed to :func:`graphfilters.data.get_dataset`: ``"digits"``,
        ``{"name": "digits", "size": 32}``, ``{"name": "cifar10", "root": "..."}``...
    out : path, optional
        Checkpoint file (an existing directory gets ``model.pt`` inside); the history is also
        written as JSON next to it.
    block_factory : callable, optional
        Passed to :func:`~graphfilters.models.build_model`.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        If the model config's ``num_classes`` / ``in_channels`` disagree with the data.

    Examples
    --------
    >>> res = train({"depth": 8, "width": 4},
    ...             {"epochs": 1, "max_steps": 1, "progress": False},
    ...             data={"name": "digits", "size": 8})
    >>> res.model.config["num_classes"], res.history[0]["steps"]
    (10, 1)
    """
    if isinstance(train_config, TrainConfig):
        config = train_config
    elif train_config is None:
        config = TrainConfig()
    else:
        config = TrainConfig.from_dict(train_config)
    dataset = get_dataset(data)
    seed_everything(config.seed)
    if isinstance(model_config, nn.Module):
        model = model_config
        mconf = getattr(_unwrap(model), "config", None)
    else:
        mconf = dict(model_config)
        mconf.setdefault("arch", "preresnet")
        for key, value in (("num_classes", dataset.num_classes),
                           ("in_channels", dataset.in_channels)):
            if mconf.get(key) is None:
                mconf[key] = value
            elif mconf[key] != value:
                raise ValueError(
                    f"model config has {key}={mconf[key]} but data set {dataset.name!r} has "
                    f"{value}; remove {key!r} from the config to take the data's"
                )
        model = build_model(mconf, block_factory=block_factory)
        mconf = model.config
    if out is not None:
        out = Path(out)
        if out.is_dir():
            out = out / "model.pt"
    return fit(model, dataset, config, out=out, model_config=mconf)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _plain(obj: Any, where: str) -> Any:
    """Recursively convert to types ``torch.load(weights_only=True)`` accepts."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str, got {k!r}")
            out[k] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"{where}: {type(obj).__name__} cannot be stored in a weights-only checkpoint; "
        "use plain types (dict, list, str, int, float, bool, None) or tensors"
    )


@V.validate_params(
    {"path": [V.PATH], "model": [V.MODULE],
     "config": [V.MAPPING, None], "train_config": V.declared(train, "train_config"),
     "data": [V.MAPPING, None], "extra": [V.MAPPING, None], "write_json": ["boolean"]},
    valid=lambda: {"path": Path(V.scratch_dir()) / "saved.pt", "model": _tiny_model()},
)
def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    config: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    *,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    write_json: bool = True,
) -> Path:
    """Write a checkpoint that :func:`load_model` rebuilds with no other input.

    Parameters
    ----------
    path : path
        Output file (parent directories are created).
    model : torch.nn.Module
        Its ``state_dict`` is stored on CPU (a DDP wrapper is unwrapped).
    config : mapping, optional
        The model config (default ``model.config``).
    history : sequence of dict, optional
        Training history.
    train_config : TrainConfig or mapping, optional
    data : mapping, optional
        Data description (``ImageData.describe()``).
    extra : mapping, optional
        Any other plain values.
    write_json : bool
        Also write configs and history (no weights) to ``path`` with suffix ``.json``.

    Returns
    -------
    pathlib.Path
        The checkpoint path.

    Examples
    --------
    >>> import tempfile, os
    >>> from graphfilters.models import PreResNet
    >>> model = PreResNet(depth=8, width=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_checkpoint(os.path.join(tmp, "m.pt"), model, history=[])
    ...     load_model(path).config == model.config
    True
    """
    model = _unwrap(model)
    if config is None:
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError("save_checkpoint needs config= (the dict that rebuilds the model) "
                             "for a model without a .config attribute")
    if isinstance(train_config, TrainConfig):
        train_config = train_config.to_dict()
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": _plain(config, "model_config"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "train_config": _plain(train_config, "train_config"),
        "history": _plain(list(history or []), "history"),
        "data": _plain(data, "data"),
        "extra": _plain(dict(extra or {}), "extra"),
        "torch_version": str(torch.__version__),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    if write_json:
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        with open(path.with_suffix(".json"), "w") as f:
            json.dump(meta, f, indent=1, default=str)
    return path


@V.validate_params({"path": [V.PATH]}, valid=lambda: {"path": example_checkpoint()})
def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read and validate a checkpoint with ``torch.load(weights_only=True)``.

    Nothing in the file is executed: a pickle that needs anything beyond tensors and plain
    containers is refused.

    Parameters
    ----------
    path : path
    map_location : str or torch.device
        Where tensors are loaded.

    Returns
    -------
    dict
        The checkpoint (see the module docstring for its keys).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For a file ``torch.load(weights_only=True)`` refuses (a foreign or unsafe pickle, not
        a torch file), for a dict without the ``"format": "graphfilters-checkpoint"`` tag, or
        for an unsupported version.
    TypeError
        If the file holds something other than a dict, or fields have the wrong types.

    Examples
    --------
    >>> load_checkpoint("/nonexistent.pt")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no checkpoint at '/nonexistent.pt'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{str(path)!r} is not a graphfilters checkpoint: torch.load(weights_only=True) "
            f"refused it ({first}). It may be a pickled object (e.g. torch.save(model)) or a "
            "file from another tool; graphfilters never unpickles arbitrary objects. Save "
            "models with graphfilters.training.save_checkpoint."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError,
            TypeError, AttributeError) as exc:  # text: unpickler IndexError
        raise ValueError(
            f"{str(path)!r} is not a readable torch checkpoint ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        ) from exc
    if not isinstance(obj, Mapping):
        raise TypeError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a graphfilters checkpoint dict; "
            "save models with graphfilters.training.save_checkpoint"
        )
    if obj.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(map(str, obj))
        hint = ""
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            hint = (" It looks like a bare state_dict: build the model yourself and call "
                    "model.load_state_dict(...), or re-save it with save_checkpoint.")
        raise ValueError(
            f"{str(path)!r} is not a graphfilters checkpoint: missing "
            f"'format': {CHECKPOINT_FORMAT!r} (found format={obj.get('format')!r}, "
            f"keys {keys[:12]}{' ...' if len(keys) > 12 else ''}).{hint}"
        )
    version = obj.get("version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise ValueError(
            f"{str(path)!r}: unsupported checkpoint version {version!r}; this graphfilters "
            f"reads versions 1..{CHECKPOINT_VERSION} (upgrade graphfilters for newer files)"
        )
    for key, kind in (("model_config", Mapping), ("state_dict", Mapping)):
        if not isinstance(obj.get(key), kind):
            raise TypeError(
                f"{str(path)!r}: checkpoint field {key!r} must be a dict, got "
                f"{type(obj.get(key)).__name__}"
            )
    bad = [k for k, v in obj["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"{str(path)!r}: state_dict entries that are not tensors: {bad[:10]}")
    return dict(obj)


def _state_dict_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]
                         ) -> str | None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    misshaped = [f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or misshaped):
        return None

    def fmt(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {fmt(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {fmt(unexpected)}")
    if misshaped:
        parts.append(f"misshaped keys: {fmt(misshaped)}")
    return "; ".join(parts)


@V.validate_params(
    {"path": V.declared(load_checkpoint, "path"),
     "block_factory": V.declared(build_model, "block_factory"),
     "return_checkpoint": ["boolean"]},
    valid=lambda: {"path": example_checkpoint()},
)
def load_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    block_factory: BlockFactory | None = None,
    return_checkpoint: bool = False,
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint`.

    Always reads with ``torch.load(weights_only=True)`` (see :func:`load_checkpoint`), rebuilds
    the architecture from the stored ``model_config`` and loads the weights strictly.

    Parameters
    ----------
    path : path
    map_location : str or torch.device
        Device of the returned model.
    block_factory : callable, optional
        Passed to :func:`~graphfilters.models.build_model`.
    return_checkpoint : bool
        Also return the checkpoint dict (history, configs, data description).

    Returns
    -------
    torch.nn.Module or (torch.nn.Module, dict)
        The model in eval mode.

    Raises
    ------
    ValueError
        See :func:`load_checkpoint`; also when the stored weights do not match the stored
        config (the message lists missing, unexpected and misshaped keys).

    Examples
    --------
    >>> load_model("/nonexistent.pt")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no checkpoint at '/nonexistent.pt'
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    try:
        model = build_model(ckpt["model_config"], block_factory=block_factory)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{str(path)!r}: cannot rebuild the model from its config: {exc}"
                         ) from exc
    state = ckpt["state_dict"]
    problem = _state_dict_mismatch(model.state_dict(), state)
    if problem is not None:
        raise ValueError(
            f"{str(path)!r}: the stored state_dict does not match the stored model config "
            f"{ckpt['model_config']}: {problem}"
        )
    model.load_state_dict(state, strict=True)
    model.to(map_location)
    model.eval()
    return (model, ckpt) if return_checkpoint else model


# --------------------------------------------------------------------------------------------
# Tiny inputs of the declared functions' valid calls (the generated invalid-input tests)
# --------------------------------------------------------------------------------------------

def _tiny_model() -> nn.Module:
    """The smallest :class:`~graphfilters.models.PreResNet` (depth 8, width 1) for the
    ``long_range`` images of :func:`example_checkpoint`."""
    return build_model({"arch": "preresnet", "depth": 8, "width": 1, "num_classes": 2,
                        "in_channels": 1})


def example_checkpoint() -> Path:
    """A tiny checkpoint written by :func:`save_checkpoint` (once per process, in
    :func:`graphfilters._validate.scratch_dir`): a PreResNet-8 of width 1 with the
    description of 2 + 2 ``long_range`` images of 8 x 8. The valid call of the declarations
    that read checkpoints, and of short examples.

    Examples
    --------
    >>> load_checkpoint(example_checkpoint())["model_config"]["depth"]
    8
    """
    path = Path(V.scratch_dir()) / "example.pt"
    if not path.is_file():
        data = get_dataset({"name": "long_range", "n_train": 2, "n_test": 2, "size": 8})
        save_checkpoint(path, _tiny_model(), history=[], data=data.describe(),
                        write_json=False)
    return path
