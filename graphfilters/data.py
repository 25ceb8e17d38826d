"""Small image data sets as torch tensors and DataLoaders. Nothing here touches the network.

Three sources, all returning an :class:`ImageData`:

:func:`load_digits`
    scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes), upscaled to
    ``size × size``, split into train/test with a seed. Ships with scikit-learn: no download.
:func:`long_range_task`
    a synthetic binary task that needs long-range interactions: two marks far apart in a noisy
    image, label 1 when they carry the same pattern. Each mark's pattern has the same marginal
    distribution in both classes, so per-pixel statistics (and any linear classifier on pixels)
    are at chance; only a model that relates the two distant marks can solve it.
:func:`load_cifar`
    CIFAR-10 / CIFAR-100 from the standard python-pickle files in a directory you give. It
    never downloads.

Conventions
-----------
- Images are stored *raw* in :class:`ImageData` (float in ``[0, 1]``-ish, or ``uint8`` for
  CIFAR), shape ``(N, C, H, W)``; labels are ``int64`` of shape ``(N,)``.
- The loaders from :meth:`ImageData.loaders` normalize each batch with the training set's
  per-channel ``mean``/``std`` and, for training and ``augment=True``, apply the standard
  augmentation first: random crop with zero padding (4) and, where the data set allows it, a
  random horizontal flip (not for digits: a mirrored 2 is not a 2).
- :meth:`ImageData.tensors` gives normalized tensors directly (for analysis code).

Examples
--------
>>> from graphfilters.data import load_digits
>>> data = load_digits(size=16, seed=0)
>>> data.x_train.shape, data.num_classes, data.in_channels
(torch.Size([1347, 1, 16, 16]), 10, 1)
>>> train_loader, test_loader = data.loaders(batch_size=64)
>>> x, y = next(iter(train_loader))
>>> x.shape, y.dtype
(torch.Size([64, 1, 16, 16]), torch.int64)
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from . import _validate as V

__all__ = [
    "BatchTransform",
    "ImageData",
    "augment_batch",
    "get_dataset",
    "load_cifar",
    "load_digits",
    "long_range_task",
    "DATASETS",
]


# --------------------------------------------------------------------------------------------
# Container and loaders
# --------------------------------------------------------------------------------------------


@V.validate_params(
    {"x": [V.InstanceOf(Tensor, "a torch.Tensor")], "padding": [V.NONNEG_INT],
     "flip": ["boolean"], "generator": [V.InstanceOf(torch.Generator), None]},
    valid=lambda: {"x": torch.zeros(1, 1, 4, 4), "padding": 1},
)
def augment_batch(x: Tensor, padding: int = 4, flip: bool = True,
                  generator: torch.Generator | None = None) -> Tensor:
    """Random crop with zero padding and random horizontal flip, per image, vectorized.

    Parameters
    ----------
    x : Tensor
        Batch of images (any dtype).
    padding : int
        Zero padding on each side before cropping back to ``H × W`` (4 in the CIFAR recipe).
    flip : bool
        Flip each image horizontally with probability 1/2.
    generator : torch.Generator, optional
        Source of randomness (on ``x.device``); default: the global generator.

    Shapes
    ------
    - x: ``(B, C, H, W)``
    - output: ``(B, C, H, W)``

    Examples
    --------
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> augment_batch(x, padding=0, flip=False).equal(x)
    True
    >>> augment_batch(x, padding=1).shape
    torch.Size([1, 1, 4, 4])
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    device = x.device
    out = x
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        rows = dy[:, None] + torch.arange(h, device=device)[None, :]  # (B, H)
        cols = dx[:, None] + torch.arange(w, device=device)[None, :]  # (B, W)
        bidx = torch.arange(b, device=device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # B,H,W,C
        out = out.permute(0, 3, 1, 2).contiguous()
    if flip:
        mask = torch.rand(b, generator=generator, device=device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out


class BatchTransform:
    """Collate step of the loaders: to float, optional augmentation, then normalization.

    ``uint8`` images are divided by 255 first. Picklable, so it works with ``num_workers > 0``.

    Parameters
    ----------
    mean, std : sequence of float
        Per-channel statistics (of the raw, ``[0, 1]``-scaled training images).
    augment : bool
        Apply :func:`augment_batch` (crop with ``padding``, flip if ``flip``).
    padding : int
    flip : bool

    Shapes
    ------
    - input: ``((B, C, H, W), (B,))``
    - output: ``((B, C, H, W) float32, (B,) int64)``
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], augment: bool = False,
                 padding: int = 4, flip: bool = True) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self.padding = padding
        self.flip = flip

    def __call__(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        x = _to_float(x)
        if self.augment:
            x = augment_batch(x, self.padding, self.flip)
        return _normalize(x, self.mean, self.std), y


def _to_float(x: Tensor) -> Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class _IndexBatchDataset(Dataset):
    """Indexed by a list of indices, returns the whole batch with one fancy-index (fast)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(index, dtype=torch.long)
        return self.x[idx], self.y[idx]


def _channel_stats(x: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of raw images (uint8 scaled to [0, 1]), in float64 chunks."""
    c = x.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    count = 0
    for start in range(0, x.shape[0], chunk):
        part = _to_float(x[start:start + chunk]).double()
        s1 += part.sum(dim=(0, 2, 3))
        s2 += (part * part).sum(dim=(0, 2, 3))
        count += part.shape[0] * part.shape[2] * part.shape[3]
    mean = s1 / max(count, 1)
    std = (s2 / max(count, 1) - mean**2).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


@dataclass
class ImageData:
    """A train/test image classification data set held as tensors.

    Attributes
    ----------
    name : str
        ``"digits"``, ``"long_range"``, ``"cifar10"`` or ``"cifar100"``.
    x_train, x_test : Tensor
        Raw images ``(N, C, H, W)``, float32 or uint8 (scaled by 1/255 when loaded).
    y_train, y_test : Tensor
        Labels ``(N,)``, int64 in ``0 … num_classes - 1``.
    num_classes : int
    mean, std : tuple of float
        Per-channel statistics of the raw training images (scaled to ``[0, 1]``).
    classes : tuple of str
        Class names.
    flip_ok : bool
        Whether horizontal flips preserve labels (``False`` for digits).
    options : dict
        The JSON-serializable arguments that recreate the data set with :func:`get_dataset`.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    flip_ok: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        """Channels ``C`` of the images."""
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def describe(self) -> dict[str, Any]:
        """JSON-serializable summary (stored in checkpoints).

        Examples
        --------
        >>> long_range_task(n_train=8, n_test=4, size=16).describe()["num_classes"]
        2
        """
        return {
            "name": self.name,
            "options": dict(self.options),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "n_train": int(self.y_train.shape[0]),
            "n_test": int(self.y_test.shape[0]),
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": list(self.classes),
        }

    @V.validate_params({"split": [V.StrOptions(("train", "test"))]},
                       valid=lambda: {"self": _tiny_image_data(), "split": "train"})
    def tensors(self, split: str = "test", device: torch.device | str | None = None
                ) -> tuple[Tensor, Tensor]:
        """Normalized images and labels of ``split`` (``"train"`` or ``"test"``) on ``device``.

        Shapes
        ------
        - output: ``((N, C, H, W) float32, (N,) int64)``

        Examples
        --------
        >>> x, y = long_range_task(n_train=8, n_test=4, size=16).tensors("test")
        >>> x.shape, y.shape
        (torch.Size([4, 1, 16, 16]), torch.Size([4]))
        """
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        x = _normalize(_to_float(x.to(device)), self.mean, self.std)
        return x, y.to(device)

    @V.validate_params(
        {"batch_size": [V.POS_INT], "augment": ["boolean"], "padding": [V.NONNEG_INT],
         "flip": ["boolean", None], "seed": [V.NONNEG_INT], "num_workers": [V.NONNEG_INT],
         "distributed": ["boolean"], "drop_last": ["boolean"],
         "test_batch_size": [V.POS_INT, None]},
        valid=lambda: {"self": _tiny_image_data(), "batch_size": 2},
    )
    def loaders(
        self,
        batch_size: int = 128,
        augment: bool = False,
        padding: int = 4,
        flip: bool | None = None,
        seed: int = 0,
        num_workers: int = 0,
        distributed: bool = False,
        drop_last: bool = False,
        test_batch_size: int | None = None,
    ) -> tuple[DataLoader, DataLoader]:
        """Train and test DataLoaders yielding normalized ``(x, y)`` batches.

        Parameters
        ----------
        batch_size : int
            Batch size of the training loader (per process under DDP).
        augment : bool
            Crop with ``padding`` and flip the training batches (test batches never).
        padding : int
            Zero padding of the random crop.
        flip : bool, optional
            Random horizontal flips when augmenting; default ``self.flip_ok``.
        seed : int
            Seed of the shuffling (and of ``DistributedSampler``).
        num_workers : int
            DataLoader workers (0: in the main process; fine for these small sets).
        distributed : bool
            Shard the training set with ``DistributedSampler`` (needs an initialized process
            group). The test loader is not sharded: every process sees the whole test set.
        drop_last : bool
            Drop the last incomplete training batch.
        test_batch_size : int, optional
            Default: ``max(batch_size, 256)``.

        Returns
        -------
        (DataLoader, DataLoader)
            Each loader item is one batch; the train loader reshuffles every epoch (call
            ``loader.sampler.sampler.set_epoch(e)`` under DDP, which the training loop does).

        Shapes
        ------
        - batches: ``((B, C, H, W) float32, (B,) int64)``
        """
        flip = self.flip_ok if flip is None else flip
        train_set = _IndexBatchDataset(self.x_train, self.y_train)
        test_set = _IndexBatchDataset(self.x_test, self.y_test)
        gen = torch.Generator()
        gen.manual_seed(seed)
        if distributed:
            from torch.utils.data.distributed import DistributedSampler

            base = DistributedSampler(train_set, shuffle=True, seed=seed, drop_last=drop_last)
        else:
            base = RandomSampler(train_set, generator=gen)
        train_loader = DataLoader(
            train_set,
            sampler=BatchSampler(base, batch_size, drop_last),
            batch_size=None,
            collate_fn=BatchTransform(self.mean, self.std, augment, padding, flip),
            num_workers=num_workers,
            generator=gen,
        )
        test_loader = DataLoader(
            test_set,
            sampler=BatchSampler(SequentialSampler(test_set),
                                 test_batch_size or max(batch_size, 256), False),
            batch_size=None,
            collate_fn=BatchTransform(self.mean, self.std, False),
            num_workers=num_workers,
        )
        return train_loader, test_loader


# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------


@V.validate_params(
    {"size": [V.Interval(V.Integral, 4, None, closed="left")],
     "test_size": [V.Interval(V.Real, 0, 1, closed="neither")], "seed": [V.NONNEG_INT, None]},
    valid=lambda: {"size": 8},
)
def load_digits(size: int = 16, test_size: float = 0.25, seed: int = 0,
                device: torch.device | str = "cpu") -> ImageData:
    """scikit-learn's handwritten digits, upscaled to ``size × size``, split with a seed.

    The 8×8 images (values 0–16) are scaled to ``[0, 1]`` and resized bilinearly; the split is
    stratified by class. The data ship with scikit-learn: nothing is downloaded.

    Parameters
    ----------
    size : int
        Output side (8 keeps the originals; 16 or 32 for a ResNet).
    test_size : float
        Fraction of the 1797 images held out for testing.
    seed : int
        Seed of the split.
    device : torch.device or str
        Where the tensors live.

    Returns
    -------
    ImageData
        1 channel, 10 classes, ``flip_ok=False``.

    Shapes
    ------
    - x_train: ``(N_train, 1, size, size)``; x_test: ``(N_test, 1, size, size)``

    Examples
    --------
    >>> data = load_digits(size=8, seed=1)
    >>> len(data.y_train) + len(data.y_test)
    1797
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    size, test_size = int(size), float(test_size)
    bunch = _sk_load_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32, device=device)[:, None]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.tensor(bunch.target, dtype=torch.long, device=device)
    idx = np.arange(len(bunch.target))
    train_idx, test_idx = train_test_split(idx, test_size=test_size, random_state=seed,
                                           stratify=bunch.target)
    tr = torch.as_tensor(np.sort(train_idx), device=device)
    te = torch.as_tensor(np.sort(test_idx), device=device)
    x_train = images[tr].contiguous()
    mean, std = _channel_stats(x_train.cpu())
    return ImageData(
        name="digits",
        x_train=x_train,
        y_train=labels[tr],
        x_test=images[te].contiguous(),
        y_test=labels[te],
        num_classes=10,
        mean=mean,
        std=std,
        classes=tuple(str(i) for i in range(10)),
        flip_ok=False,
        options={"size": size, "test_size": test_size, "seed": seed},
    )


# --------------------------------------------------------------------------------------------
# Synthetic long-range task
# --------------------------------------------------------------------------------------------


def _patterns(n_patterns: int, mark_size: int, rng: np.random.Generator) -> np.ndarray:
    """``n_patterns`` distinct ±1 patterns of ``mark_size²`` pixels, each exactly half +1."""
    cells = mark_size * mark_size
    n_on = cells // 2
    seen: set[bytes] = set()
    out = []
    for _ in range(10000):
        flat = -np.ones(cells, dtype=np.float32)
        flat[rng.permutation(cells)[:n_on]] = 1.0
        key = flat.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(flat.reshape(mark_size, mark_size))
        if len(out) == n_patterns:
            return np.stack(out)
    raise ValueError(
        f"cannot draw {n_patterns} distinct {mark_size}x{mark_size} patterns; "
        "use fewer patterns or a larger mark_size"
    )


def _render_long_range(n: int, size: int, patterns: np.ndarray, noise: float, min_distance: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k, m, _ = patterns.shape
    labels = rng.permutation(np.arange(n) % 2).astype(np.int64)  # exactly balanced (±1)
    first = rng.integers(0, k, size=n)
    other = (first + rng.integers(1, k, size=n)) % k  # uniform over the other patterns
    second = np.where(labels == 1, first, other)
    images = rng.normal(0.0, noise, size=(n, 1, size, size)).astype(np.float32)
    span = size - m + 1
    for i in range(n):
        for _ in range(1000):
            y0, x0, y1, x1 = rng.integers(0, span, size=4)
            if max(abs(int(y0) - int(y1)), abs(int(x0) - int(x1))) >= min_distance:
                break
        else:  # pragma: no cover - guarded by the argument checks
            raise RuntimeError("could not place two marks far enough apart")
        images[i, 0, y0:y0 + m, x0:x0 + m] += patterns[first[i]]
        images[i, 0, y1:y1 + m, x1:x1 + m] += patterns[second[i]]
    return images, labels


@V.validate_params(
    {"n_train": [V.POS_INT], "n_test": [V.POS_INT], "size": [V.POS_INT],
     "mark_size": [V.Interval(V.Integral, 2, None, closed="left")],
     "n_patterns": [V.Interval(V.Integral, 2, None, closed="left")],
     "noise": [V.NONNEG_REAL], "min_distance": [V.NONNEG_INT, None], "seed": [V.NONNEG_INT],
     "receptive_field": [V.POS_INT, None]},
    valid=lambda: {"n_train": 4, "n_test": 2, "size": 16},
)
def long_range_task(
    n_train: int = 2000,
    n_test: int = 500,
    size: int = 32,
    mark_size: int = 4,
    n_patterns: int = 4,
    noise: float = 0.5,
    min_distance: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    receptive_field: int | None = None,
) -> ImageData:
    """Synthetic "same or different?" task whose two cues are far apart.

    Each image is Gaussian noise (std ``noise``) with two ``mark_size × mark_size`` marks added
    at random positions whose Chebyshev distance is at least ``min_distance``. Each mark is one
    of ``n_patterns`` fixed ±1 patterns (half of the pixels +1). Label 1 (``"same"``): both marks
    have the same pattern; label 0: different patterns. The labels are exactly balanced, and
    each mark's pattern and position have the same distribution in both classes, so the
    per-pixel mean and variance of the two classes agree and a linear model on pixels is at
    chance. A convolutional network whose receptive field does not cover both marks, followed by
    global average pooling and a linear classifier, computes ``h(a) + h(b)``, which cannot
    express "a equals b": the task needs a long-range (nonlocal) interaction.

    With the default ``min_distance = size // 2`` a deep enough backbone still sees both marks:
    a plain PreResNet-20 (receptive field 81 pixels) solves it at any size up to ~64. To make
    a task that *needs* a nonlocal block, pass the backbone's ``receptive_field``
    (:func:`graphfilters.models.receptive_field`, 25 for PreResNet-8): the marks are then at
    Chebyshev distance ``>= receptive_field + mark_size - 1``, so no output unit of the
    backbone sees a pixel of both, and the plain backbone is at chance on the test set
    whatever it is trained for (it can only fit the training noise). ``size`` must then be at
    least ``receptive_field + 2·mark_size - 1`` (32 for PreResNet-8 with 4×4 marks; 40 leaves
    room for varied placements). Measured on the CPU (PreResNet-8, width 8, ``size=40``,
    ``receptive_field=25``, ``noise=0.25``, ``n_patterns=2``, 2000 training images, 10
    epochs; the block at the input of stage 3; see the docs page "Does SNL make stacking
    robust?"): the plain backbone stays at chance on the test set (0.50) while fitting its
    training set, and the same backbone with one NL block reaches 0.996.

    Generated deterministically from ``seed`` (numpy ``default_rng``); train and test share the
    patterns and are drawn independently.

    Parameters
    ----------
    n_train, n_test : int
        Numbers of images.
    size : int
        Image side.
    mark_size : int
        Side of a mark.
    n_patterns : int
        Number of distinct patterns (>= 2).
    noise : float
        Standard deviation of the background noise.
    min_distance : int, optional
        Minimum Chebyshev distance between the marks' corners; default ``size // 2``, or
        ``receptive_field + mark_size - 1`` when ``receptive_field`` is given.
    seed : int
    device : torch.device or str
    receptive_field : int, optional
        Place the marks beyond a backbone receptive field of this side (pixels).

    Returns
    -------
    ImageData
        1 channel, 2 classes (``"different"``, ``"same"``), ``flip_ok=True``.

    Shapes
    ------
    - x_train: ``(n_train, 1, size, size)``; x_test: ``(n_test, 1, size, size)``

    Examples
    --------
    >>> data = long_range_task(n_train=100, n_test=10, size=16, seed=0)
    >>> data.x_train.shape, int(data.y_train.sum())
    (torch.Size([100, 1, 16, 16]), 50)
    >>> long_range_task(n_train=8, n_test=8, size=40, receptive_field=25).options["min_distance"]
    28
    """
    if mark_size > size // 2:
        raise ValueError(f"mark_size must be in 2..size//2 = {size // 2}, got {mark_size}")
    if receptive_field is not None:
        beyond = receptive_field + mark_size - 1
        if min_distance is not None and min_distance < beyond:
            raise ValueError(
                f"min_distance={min_distance} is inside receptive_field={receptive_field} "
                f"(needs >= receptive_field + mark_size - 1 = {beyond}); omit min_distance")
        if size - mark_size < beyond:
            raise ValueError(
                f"size={size} is too small to place {mark_size}x{mark_size} marks beyond a "
                f"receptive field of {receptive_field}: size must be >= "
                f"{beyond + mark_size}")
        min_distance = beyond if min_distance is None else min_distance
    if min_distance is None:
        min_distance = size // 2
    if not mark_size <= min_distance <= size - mark_size:
        raise ValueError(
            f"min_distance must be in {mark_size}..{size - mark_size} (marks may not overlap "
            f"and must fit in the image), got {min_distance}"
        )
    rng = np.random.default_rng(seed)
    patterns = _patterns(n_patterns, mark_size, rng)
    x_tr, y_tr = _render_long_range(n_train, size, patterns, noise, min_distance, rng)
    x_te, y_te = _render_long_range(n_test, size, patterns, noise, min_distance, rng)
    x_train = torch.as_tensor(x_tr, device=device)
    mean, std = _channel_stats(x_train.cpu())
    return ImageData(
        name="long_range",
        x_train=x_train,
        y_train=torch.as_tensor(y_tr, device=device),
        x_test=torch.as_tensor(x_te, device=device),
        y_test=torch.as_tensor(y_te, device=device),
        num_classes=2,
        mean=mean,
        std=std,
        classes=("different", "same"),
        flip_ok=True,
        options={"n_train": n_train, "n_test": n_test, "size": size, "mark_size": mark_size,
                 "n_patterns": n_patterns, "noise": noise, "min_distance": min_distance,
                 "seed": seed, "receptive_field": receptive_field},
    )


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------

_CIFAR_LAYOUT = {
    # name: (sub-directory of the official archive, train files, test files, meta file)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                ("test_batch",), "batches.meta"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta"),
}

# The only globals the official CIFAR pickles (numpy arrays in dicts) need.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _CifarUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only resolves the numpy globals a CIFAR batch file needs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a CIFAR batch file only holds numpy "
            "arrays and lists"
        )


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{path} is not a CIFAR python-pickle batch file ({exc}); extract the official "
            "'python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html"
        ) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_arrays(batch: dict, path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or label_key not in batch:
        raise ValueError(
            f"{path}: expected keys 'data' and {label_key!r}, found {sorted(batch)}"
        )
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must have shape (N, 3072), got {data.shape}")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {label_key!r} has {labels.shape} entries for {data.shape[0]} images"
        )
    return data.reshape(-1, 3, 32, 32), labels


@V.validate_params(
    {"root": [V.PATH],
     "name": [V.InstanceOf(str, "a data set name (str)")],
     "label_mode": [V.StrOptions(("fine", "coarse"))],
     "n_train": [V.NONNEG_INT, None], "n_test": [V.NONNEG_INT, None]},
    valid=lambda: {"root": _tiny_cifar_root(), "name": "cifar100", "n_train": 1},
)
def load_cifar(
    root: str | os.PathLike,
    name: str = "cifar10",
    label_mode: str = "fine",
    n_train: int | None = None,
    n_test: int | None = None,
    device: torch.device | str = "cpu",
) -> ImageData:
    """CIFAR-10 or CIFAR-100 from the official python-pickle files in ``root``. No download.

    ``root`` is the extracted directory (``cifar-10-batches-py`` / ``cifar-100-python``) or its
    parent. Expected files: CIFAR-10 ``data_batch_1`` … ``data_batch_5``, ``test_batch`` and
    ``batches.meta``; CIFAR-100 ``train``, ``test`` and ``meta`` (the meta files only give class
    names and may be missing).

    The files are read with a restricted ``pickle.Unpickler(..., encoding="bytes")`` that only
    resolves the numpy globals these files contain, so a tampered file cannot run code; still,
    load only data files you obtained from the official source.

    Parameters
    ----------
    root : path
        Directory holding the files.
    name : str
        ``"cifar10"`` or ``"cifar100"``.
    label_mode : str
        CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
    n_train, n_test : int, optional
        Keep only the first ``n`` images of each split (quick runs).
    device : torch.device or str
        Where the ``uint8`` tensors live.

    Returns
    -------
    ImageData
        3 channels, ``uint8`` images (scaled by 1/255 in the loaders), ``flip_ok=True``.

    Raises
    ------
    FileNotFoundError
        If files are missing; the message lists the expected files and where it looked.
    ValueError
        For files that are not CIFAR batch files.

    Shapes
    ------
    - x_train: ``(50000, 3, 32, 32)`` uint8; x_test: ``(10000, 3, 32, 32)`` uint8

    Examples
    --------
    >>> load_cifar("/nonexistent/dir")
    Traceback (most recent call last):
    ...
    FileNotFoundError: CIFAR-10 files not found ...
    """
    key = name.lower().replace("-", "")
    if key not in _CIFAR_LAYOUT:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    sub, train_files, test_files, meta_file = _CIFAR_LAYOUT[key]
    title = "CIFAR-10" if key == "cifar10" else "CIFAR-100"
    root = Path(root).expanduser()
    candidates = [root, root / sub]
    required = train_files + test_files
    folder = next((c for c in candidates if all((c / f).is_file() for f in required)), None)
    if folder is None:
        missing = [f for f in required if not (root / f).is_file()]
        raise FileNotFoundError(
            f"{title} files not found in {str(root)!r} (nor in {str(root / sub)!r}): expected "
            f"{', '.join(required)} (and {meta_file}); missing in {str(root)!r}: "
            f"{', '.join(missing)}. Download the 'python version' from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, extract it and pass its directory; "
            "graphfilters never downloads."
        )
    if key == "cifar10":
        label_key, names_key = "labels", "label_names"
    else:
        label_key, names_key = f"{label_mode}_labels", f"{label_mode}_label_names"

    def read(files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_cifar_arrays(_read_cifar_pickle(folder / f), folder / f, label_key)
                 for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_tr, y_tr = read(train_files)
    x_te, y_te = read(test_files)
    if n_train is not None:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    if n_test is not None:
        x_te, y_te = x_te[:n_test], y_te[:n_test]
    num_classes = 10 if key == "cifar10" else (100 if label_mode == "fine" else 20)
    classes: tuple[str, ...] = tuple(str(i) for i in range(num_classes))
    meta_path = folder / meta_file
    if meta_path.is_file():
        meta = _read_cifar_pickle(meta_path)
        names = meta.get(names_key)
        if names is not None and len(names) == num_classes:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    for split, y in (("train", y_tr), ("test", y_te)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(
                f"{title} {split} labels must be in 0..{num_classes - 1}, got "
                f"{int(y.min())}..{int(y.max())}"
            )
    x_train = torch.as_tensor(np.ascontiguousarray(x_tr), device=device)
    mean, std = _channel_stats(x_train.cpu())
    options: dict[str, Any] = {"root": str(root), "n_train": n_train, "n_test": n_test}
    if key == "cifar100":
        options["label_mode"] = label_mode
    return ImageData(
        name=key,
        x_train=x_train,
        y_train=torch.as_tensor(y_tr, device=device),
        x_test=torch.as_tensor(np.ascontiguousarray(x_te), device=device),
        y_test=torch.as_tensor(y_te, device=device),
        num_classes=num_classes,
        mean=mean,
        std=std,
        classes=classes,
        flip_ok=True,
        options=options,
    )


def _load_cifar10(**options: Any) -> ImageData:
    return load_cifar(name="cifar10", **options)


def _load_cifar100(**options: Any) -> ImageData:
    return load_cifar(name="cifar100", **options)


#: Data sets known to :func:`get_dataset`: name -> loader.
DATASETS = {
    "digits": load_digits,
    "long_range": long_range_task,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
}


@V.validate_params(
    {"spec": [V.InstanceOf((str, Mapping, ImageData),
                           "a data set name (str), a mapping or an ImageData")]},
    valid=lambda: {"spec": {"name": "long_range", "n_train": 4, "n_test": 2, "size": 8}},
)
def get_dataset(spec: str | Mapping[str, Any] | ImageData, **options: Any) -> ImageData:
    """Load a data set by name, from a ``{"name": ..., **options}`` dict, or pass one through.

    Parameters
    ----------
    spec : str, mapping or ImageData
        ``"digits"``, ``"long_range"``, ``"cifar10"``, ``"cifar100"`` (see :data:`DATASETS`), a
        dict such as ``ImageData.describe()`` (``name`` and ``options``) or
        ``{"name": "digits", "size": 32}``, or an :class:`ImageData` (returned as is).
    **options
        Keyword arguments of the loader (e.g. ``size=32``, ``root="~/data/cifar"``).

    Returns
    -------
    ImageData

    Examples
    --------
    >>> get_dataset({"name": "long_range", "n_train": 10, "n_test": 4, "size": 16}).num_classes
    2
    """
    if isinstance(spec, ImageData):
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        name = spec.pop("name", None)
        nested = spec.pop("options", None)
        kwargs = dict(nested) if isinstance(nested, Mapping) else {}
        known = {"num_classes", "in_channels", "image_size", "n_train", "n_test", "mean", "std",
                 "classes"} if nested is not None else set()
        kwargs.update({k: v for k, v in spec.items() if k not in known})
        kwargs.update(options)
    else:
        name, kwargs = spec, dict(options)
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name.lower()](**kwargs)


# --------------------------------------------------------------------------------------------
# Tiny inputs of the declared functions' valid calls (the generated invalid-input tests)
# --------------------------------------------------------------------------------------------

def _tiny_image_data() -> ImageData:
    """A 2 + 2 image data set of 1 × 4 × 4 images."""
    x = torch.arange(32, dtype=torch.float32).reshape(2, 1, 4, 4) / 32
    y = torch.tensor([0, 1])
    return ImageData(name="tiny", x_train=x, y_train=y, x_test=x.clone(), y_test=y.clone(),
                     num_classes=2, mean=(0.5,), std=(0.3,))


def _tiny_cifar_root() -> Path:
    """A CIFAR-100 layout of 2 + 1 images in :func:`graphfilters._validate.scratch_dir`
    (written once per process)."""
    root = Path(V.scratch_dir()) / "cifar"
    if not all((root / f).is_file() for f in ("train", "test")):
        root.mkdir(exist_ok=True)
        for split, n in (("train", 2), ("test", 1)):
            batch = {b"data": [[7 * i] * 3072 for i in range(n)], b"fine_labels": list(range(n)),
                     b"coarse_labels": list(range(n))}
            with open(root / split, "wb") as f:
                pickle.dump(batch, f)
    return root
