r"""Capture the affinities and filters that a model's nonlocal blocks actually use.

:func:`capture` runs a model in eval mode under :func:`torch.no_grad` on some inputs and
returns, for every nonlocal module found (keyed by its module path), a :class:`Capture`: the
affinity structure (dense, or its low-rank / softmax factors when the block has them), the
signal :math:`Z`, the affinity-form filter weights :math:`W_k`, the block spec and the spatial
shape, so that

.. math::

    F = \sum_{k=0}^{K} B_k(\hat A)\, Z\, W_k, \qquad \hat A = \text{normalize}(A),

can be rebuilt, analysed spectrally, and a row of :math:`\hat A` drawn on the image grid.

Three kinds of modules are recognized (the first match wins, outermost module first):

1. **adapters** registered with :func:`register_adapter` (checked first, so they can
   override the built-in handling);
2. **graphfilters blocks**: any module with a ``spec`` (:class:`~graphfilters.specs.BlockSpec`)
   and ``filter_weights()``; ``block.record`` is switched on during the run and the
   ``FilterRecord`` of every forward is read. A stage of units sharing one affinity
   (``last_records``) gives one capture per unit, ``{path}.units.{u}``;
3. modules of a **recognizer** family (:class:`Recognizer`, :func:`register_recognizer`;
   built in, see :mod:`analysis.recognizers`: :class:`torch.nn.MultiheadAttention` and
   ``nn.TransformerEncoderLayer``, Hugging Face ``transformers`` self-attention, timm
   ``Attention``, mmcv ``NonLocal2d``): the attention is *recomputed* from the module's call
   arguments and weights (fused kernels never form it), with the call's masks.
   ``heads="mean"`` averages the heads (what ``average_attn_weights=True`` returns, a dense
   ``(B, L, S)`` affinity); ``heads="keep"`` keeps one row-stochastic affinity per head
   (batch shape ``(B, H)``, a :class:`~graphfilters.graph.SoftmaxAffinity` without mask).
   Inside a transformer layer the capture is the layer's residual branch (``residual=True``,
   ``info["layer"]``, ``info["layernorm"]``).

PyTorch's native MHA fast path (nested tensors for padding masks) is switched off during the
run and restored. Everything is computed where the model lives; the results are moved to
``device`` (the CPU by default). Hooks are removed and the ``record`` flags and train/eval
modes of every module are restored afterwards, also when the forward raises.

Examples
--------
>>> import torch
>>> from analysis.capture import capture
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.attn = mha
...     def forward(self, x):
...         return self.attn(x, x, x)[0]
>>> caps = capture(Net(), torch.randn(3, 5, 8), progress=False)
>>> list(caps), caps["attn"].affinity.shape, caps["attn"].n_samples
(['attn'], (3, 5, 5), 3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from numbers import Real  # noqa: F401
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from graphfilters import _validate as V
from graphfilters.graph import (
    Affinity,
    DenseAffinity,
)
from graphfilters.specs import BlockSpec, get_spec

from .capture_record import SELF_CHECK_TOL, Capture, Captures, affinity_rows
from .observe import AffinityWatcher, Observation, reading
from .observed import applied_affinity, observed_capture
from .registry import (
    CallContext,
    Recognizer,
    adapter_for,
    recognizer_for,
    recognizers,
    register_adapter,
    register_recognizer,
    unregister_adapter,
    unregister_recognizer,
)

__all__ = [
    "Capture",
    "Captures",
    "capture",
    "register_adapter",
    "unregister_adapter",
    "Recognizer",
    "CallContext",
    "register_recognizer",
    "unregister_recognizer",
    "recognizers",
    "run_batch",
    "find_nonlocal_modules",
    "MHA_SPEC",
    "ROOT",
    "affinity_rows",
    "model_device",
]

#: The block-table row that describes :class:`torch.nn.MultiheadAttention` as a graph filter:
#: softmax (row-stochastic) affinity, order 1, :math:`W_0 = 0`, :math:`F = A Z W`.
MHA_SPEC: BlockSpec = replace(
    get_spec("nl"),
    name="mha",
    title="Multi-head attention (torch.nn.MultiheadAttention)",
    reference="Vaswani et al. Attention Is All You Need. NeurIPS 2017.",
    modes=(),
    mode=None,
    affinity_latex=r"A_h = \operatorname{softmax}_{row}(Q_h K_h^{T} / \sqrt{d})",
    filter_latex=r"F = [A_1 Z_1, \dots, A_H Z_H]\, W_o",
)

#: The path given to the model itself when it is the nonlocal module.
ROOT = "(root)"


def _is_block(module: nn.Module) -> bool:
    return isinstance(getattr(module, "spec", None), BlockSpec) and callable(
        getattr(module, "filter_weights", None)
    ) and hasattr(module, "record")


def _kind(module: nn.Module) -> str | None:
    if adapter_for(module) is not None:
        return "adapter"
    if _is_block(module):
        return "block"
    if recognizer_for(module) is not None:
        return "attention"
    return None


#: Module paths (str) or module types, as ``capture``'s ``blocks`` lists them.
_MODULE_PATHS = V.Each(V.InstanceOf((str, type)), nonempty=False,
                       name="a sequence of module paths (str) or module types")


class _Batches(V.Constraint):
    """The data of a run: a tensor, a mapping of keyword inputs or an iterable of batches
    (a ``DataLoader``, a list of ``(input, target)`` pairs), not ``None`` or a string."""

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, (Tensor, Mapping, Iterable)) and not isinstance(
            value, (str, bytes))

    def __str__(self) -> str:
        return "a tensor, a dict of keyword inputs or an iterable of batches"

    def invalid_values(self) -> list[Any]:
        return [None, "batches", 3.0]


def _example_model() -> nn.Module:
    from graphfilters.blocks import make_block

    return nn.Sequential(make_block("snl", 4))


@V.validate_params(
    {"model": [V.MODULE], "blocks": [_MODULE_PATHS, None]},
    valid=lambda: {"model": _example_model()},
)
def find_nonlocal_modules(
    model: nn.Module, blocks: Sequence[str | type] | None = None
) -> list[tuple[str, nn.Module, str]]:
    """The nonlocal modules of ``model`` as ``(path, module, kind)``, outermost first.

    ``kind`` is ``"adapter"``, ``"block"`` or ``"attention"`` (a module read by a
    :class:`Recognizer`). Modules inside a found module are not listed again. ``blocks``
    restricts the result to those module paths or types.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.MultiheadAttention(4, 1))
    >>> [(p, k) for p, _, k in find_nonlocal_modules(net)]
    [('1', 'attention')]
    """
    found: list[tuple[str, nn.Module, str]] = []
    for path, module in model.named_modules():
        if any(p == ROOT or path.startswith(p + ".") for p, _, _ in found):
            continue
        kind = _kind(module)
        if kind is not None:
            found.append((path or ROOT, module, kind))
    if blocks is None:
        return found
    wanted_paths = {b for b in blocks if isinstance(b, str)}
    wanted_types = tuple(b for b in blocks if isinstance(b, type))
    known = {p for p, _, _ in found}
    missing = sorted(wanted_paths - known)
    if missing:
        raise ValueError(
            f"no nonlocal module at path(s) {missing}; found: {sorted(known) or 'none'}"
        )
    return [
        (p, m, k) for p, m, k in found
        if p in wanted_paths or (wanted_types and isinstance(m, wanted_types))
    ]


# ------------------------------------------------------------------------------------------
# Extraction from graphfilters blocks
# ------------------------------------------------------------------------------------------


def _value_projection(module: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """``(G, b)`` with ``Z = X G + b`` from a block's ``g`` 1x1 convolution, if linear."""
    g = getattr(module, "g", None)
    if g is None:
        return None, None
    w = getattr(g, "weight", None)
    if not isinstance(w, Tensor) or getattr(g, "groups", 1) != 1:
        return None, None
    if w.ndim >= 2 and all(s == 1 for s in w.shape[2:]):
        G = w.detach().reshape(w.shape[0], w.shape[1]).T.clone()
        b = getattr(g, "bias", None)
        return G, (b.detach().clone() if isinstance(b, Tensor) else None)
    return None, None


def _from_record(path: str, module: nn.Module, rec: Any, unit: nn.Module | None = None) -> Capture:
    """A :class:`Capture` from a block's ``FilterRecord`` (or a record-like object)."""
    owner = unit if unit is not None else module
    spec = getattr(rec, "spec", None) or getattr(owner, "spec", None)
    scale = shift = None
    affine = getattr(rec, "output_scale", None)
    if isinstance(affine, tuple) and len(affine) == 2:
        scale, shift = affine
    elif isinstance(affine, dict):
        scale, shift = affine.get("scale"), affine.get("shift")
    elif isinstance(affine, Tensor):
        scale = affine
    G, b = _value_projection(owner)
    info = dict(getattr(rec, "info", {}) or {})
    aff = getattr(rec, "affinity", None)
    if isinstance(aff, Tensor):
        aff = DenseAffinity(aff.detach())
    weights = getattr(rec, "weights", None)
    return Capture(
        path=path,
        source="block",
        module_type=type(owner).__name__,
        affinity=aff,
        normalization=str(getattr(rec, "normalization", None)
                          or (spec.normalization if spec is not None else "none")),
        spec=spec,
        z=_detach(getattr(rec, "z", None)),
        weights=None if weights is None else [_detach(w) for w in weights],
        basis_params=_basis_params(rec, owner),
        spatial_shape=tuple(getattr(rec, "spatial_shape", ()) or ()),
        input=_detach(getattr(rec, "input", None)),
        output_scale=_detach(scale),
        output_shift=_detach(shift),
        value_weight=G,
        value_bias=b,
        residual=True,
        relu_after_norm=bool(getattr(rec, "relu_after_norm", False)),
        info=info,
        module=owner,
    )


def _detach(t: Any) -> Any:
    return t.detach() if isinstance(t, Tensor) else t


def _basis_params(rec: Any, owner: nn.Module) -> dict[str, Tensor] | None:
    """The rational basis parameters of a record (``params``), else of its block
    (``filter_parameters()``), detached copies; ``None`` when there are none."""
    params = getattr(rec, "params", None)
    if not params:
        fp = getattr(owner, "filter_parameters", None)
        if callable(fp):
            with torch.no_grad():
                params = fp()
    if not params:
        return None
    return {str(k): torch.as_tensor(v).detach().clone() for k, v in dict(params).items()}


def _from_adapter_result(path: str, module: nn.Module, res: Any) -> Capture | None:
    if res is None:
        return None
    if isinstance(res, Capture):
        # a module or call supplied by the adapter (e.g. a wrapper) is kept
        cap = replace(res, path=path, source="adapter",
                      module=res.module if res.module is not None else module,
                      module_type=type(module).__name__)
        if isinstance(cap.affinity, Tensor):
            cap.affinity = DenseAffinity(cap.affinity.detach())
        return cap
    if isinstance(res, (Affinity, Tensor)):
        aff = res.detach() if isinstance(res, Affinity) else DenseAffinity(res.detach())
        return Capture(path=path, source="adapter", module_type=type(module).__name__,
                       affinity=aff, normalization="none", module=module, residual=False)
    if hasattr(res, "affinity"):
        cap = _from_record(path, module, res)
        cap.source = "adapter"
        if getattr(res, "normalization", None) is None:
            cap.normalization = "none"
        cap.residual = bool(getattr(res, "residual", False))
        if callable(getattr(res, "call", None)):
            cap.call = res.call
            cap.call_kwargs = dict(getattr(res, "call_kwargs", None) or {})
        return cap
    raise TypeError(
        f"the adapter for {type(module).__name__} returned {type(res).__name__}; return an "
        "Affinity, a (B, N, N) tensor, a Capture, a record with an 'affinity' attribute, or None"
    )


# ------------------------------------------------------------------------------------------
# Merging batches
# ------------------------------------------------------------------------------------------


def _cat_affinities(parts: list[Affinity]) -> Affinity:
    return parts[0] if len(parts) == 1 else parts[0].concat(parts[1:])


def _take(aff: Affinity, k: int) -> Affinity:
    return aff.map_fields(lambda t: t[:k])


def _merge(pieces: list[Capture], device: torch.device | None) -> Capture:
    first = pieces[0]
    aff = _cat_affinities([p.affinity for p in pieces]) if first.affinity is not None else None

    def cat(name: str) -> Tensor | None:
        vals = [getattr(p, name) for p in pieces]
        if any(v is None for v in vals):
            return None
        return torch.cat(vals, 0)

    n = sum(p.n_samples for p in pieces)
    kw = {k: torch.cat([p.call_kwargs[k] for p in pieces], 0) for k in first.call_kwargs
          if all(k in p.call_kwargs for p in pieces)}
    cap = replace(first, affinity=aff, z=cat("z"), input=cat("input"), n_samples=n,
                  call_kwargs=kw)
    return cap.to(device) if device is not None else cap


def batch_input(batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        for key in _INPUT_KEYS:
            if key in batch:
                return batch[key]
    raise TypeError(
        f"cannot find the model input in a batch of type {type(batch).__name__}: pass a "
        "tensor, an iterable of tensors or of (input, target) pairs, a dict of keyword "
        "inputs, or forward=fn(model, batch)"
    )


#: Keys of a dict batch read as the one positional input; other dicts are keyword inputs.
_INPUT_KEYS = ("input", "inputs", "x", "image", "images")


def _batch_size(x: Any) -> int:
    """The leading size of the first tensor in ``x`` (tensor, sequence or mapping)."""
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.dim() > 0 else 1
    values = list(x.values()) if isinstance(x, Mapping) else (
        list(x) if isinstance(x, (list, tuple)) else [])
    for v in values:
        if isinstance(v, Tensor) and v.dim() > 0:
            return int(v.shape[0])
    raise TypeError(f"cannot infer the batch size of a {type(x).__name__} input")


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _as_batches(data: Any) -> Any:
    """One batch (tensor or dict of keyword inputs) as a list; an iterable as it is."""
    return [data] if isinstance(data, (Tensor, Mapping)) else data


def run_batch(
    model: nn.Module,
    batch: Any,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Any, int]:
    r"""Call ``model`` on one batch the way :func:`capture` and :func:`~analysis.analyze`
    do, and return ``(output, batch size)``.

    ``forward(model, batch)`` when given; a dict without an input key (``"input"``,
    ``"x"``, ``"image"``...) as keyword inputs, ``model(**batch, **model_kwargs)``
    (Hugging Face style: ``input_ids``, ``attention_mask``, ``pixel_values``); otherwise the
    batch's input tensor, ``model(x, **model_kwargs)``. Tensors go to the model's device.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> run_batch(lin, {"input": torch.randn(4, 3)})[1]
    4
    """
    dev = model_device(model)
    kw = _to_device(dict(model_kwargs or {}), dev)
    if forward is not None:
        b = _to_device(batch, dev)
        return forward(model, b), _batch_size(b)
    if isinstance(batch, Mapping) and not any(k in batch for k in _INPUT_KEYS):
        b = _to_device(batch, dev)
        return model(**b, **kw), _batch_size(b)
    x = _to_device(batch_input(batch), dev)
    return model(x, **kw), _batch_size(x)


def _parents(model: nn.Module) -> dict[str, nn.Module]:
    """``{path: parent module}`` for every submodule path (the root has none)."""
    mods = dict(model.named_modules())
    out = {}
    for path in mods:
        if path:
            head = path.rsplit(".", 1)[0] if "." in path else ""
            out[path] = mods[head]
    return out


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU if it has none).

    Examples
    --------
    >>> model_device(nn.ReLU())
    device(type='cpu')
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _slice_capture(cap: Capture, k: int) -> Capture:
    """Keep the first ``k`` samples of a one-batch capture."""
    if cap.n_samples <= k:
        return cap
    return replace(
        cap,
        affinity=_take(cap.affinity, k) if cap.affinity is not None else None,
        z=None if cap.z is None else cap.z[:k],
        input=None if cap.input is None else cap.input[:k],
        n_samples=k,
        call_kwargs={name: v[:k] for name, v in cap.call_kwargs.items()},
    )


def _affinity_batch(aff: Affinity | None, default: int) -> int:
    if aff is None or not aff.batch_shape:
        return default
    return int(aff.batch_shape[0])


@V.validate_params(
    {"model": [V.MODULE], "blocks": [_MODULE_PATHS, None],
     "max_samples": [V.POS_INT], "heads": [V.StrOptions(("mean", "keep"))],
     "forward": ["callable", None], "model_kwargs": [V.MAPPING, None],
     "progress": ["boolean"]},
    valid=lambda: {"model": _example_model(), "inputs_or_loader": torch.randn(1, 4, 3, 3),
                   "progress": False},
)
def capture(
    model: nn.Module,
    inputs_or_loader: Tensor | Iterable[Any],
    blocks: Sequence[str | type] | None = None,
    max_samples: int = 16,
    *,
    heads: str = "mean",
    device: torch.device | str | None = "cpu",
    forward: Callable[[nn.Module, Any], Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Captures:
    r"""Run ``model`` and capture what its nonlocal modules compute.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode under :func:`torch.no_grad`; its train/eval modes are restored.
    inputs_or_loader : Tensor, dict or iterable
        One input batch, or an iterable of batches (tensors, ``(input, target, ...)``
        tuples, dicts with an ``"input"`` key, or dicts of keyword inputs such as a Hugging
        Face ``BatchEncoding``: ``model(**batch)``), e.g. a ``DataLoader``. Inputs are moved
        to the model's device (see :func:`run_batch`).
    blocks : sequence of str or type, optional
        Module paths or module types to capture (default: every nonlocal module found).
    max_samples : int
        Stop after this many samples (the last batch is truncated).
    heads : {"mean", "keep"}
        For ``nn.MultiheadAttention``: average the heads' attention or keep one affinity
        per head.
    device : device or None
        Where the results are put (default the CPU; ``None``: stay on the model's device).
    forward : callable, optional
        ``forward(model, batch)`` for models that do not take ``model(input)``.
    model_kwargs : dict, optional
        Keyword inputs added to every call, e.g. ``{"src_key_padding_mask": mask}``.
    progress : bool
        Show a tqdm bar over batches.

    Returns
    -------
    Captures
        ``{path: Capture}``; empty (with ``.reason``) when the model has no nonlocal module.

    Raises
    ------
    TypeError, ValueError
        For a non-module model, unknown block paths, bad ``max_samples`` or ``heads``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))
    >>> caps = capture(net, torch.randn(2, 3, 4, 4), progress=False)
    >>> len(caps), caps.reason[:24]
    (0, 'no nonlocal module found')
    """
    missing_error: ValueError | None = None
    try:
        found = find_nonlocal_modules(model, blocks)
    except ValueError as exc:                 # a wanted path may still be observed
        missing_error = exc
        found = [f for f in find_nonlocal_modules(model)
                 if f[0] in {b for b in blocks if isinstance(b, str)}]  # type: ignore[union-attr]
    out_device = None if device is None else torch.device(device)
    pieces: dict[str, list[Capture]] = {}
    order: list[str] = []
    state: dict[str, Any] = {"take": 0, "paths": set(), "batch": 0}
    records: dict[nn.Module, Any] = {}
    parent_calls: dict[int, tuple[tuple, dict]] = {}
    parents = _parents(model)
    names = {m: (p or ROOT) for p, m in model.named_modules()}
    watcher = AffinityWatcher()
    failures: dict[str, str] = {}          # path -> why its recognizer's capture was not used
    covered = {p for p, _, _ in found}     # paths whose observations a capture accounts for

    def under(owner: str, path: str) -> bool:
        return path == ROOT or owner == path or owner.startswith(path + ".")

    def repeated(path: str) -> None:           # a module called twice in one forward
        first = pieces[path][-1]
        first.info["repeated_calls"] = first.info.get("repeated_calls", 1) + 1

    def add(cap: Capture | None) -> None:
        if cap is None:
            return
        if cap.path in state["paths"]:
            repeated(cap.path)
            return
        state["paths"].add(cap.path)
        cap.n_samples = _affinity_batch(cap.affinity, cap.n_samples or state["take"])
        cap = _slice_capture(cap, state["take"])
        if cap.path not in pieces:
            pieces[cap.path] = []
            order.append(cap.path)
        pieces[cap.path].append(cap)

    def block_hook(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            recs = getattr(module, "last_records", None)
            units = getattr(module, "units", None)
            if isinstance(recs, (list, tuple)) and len(recs) > 1:
                for u, rec in enumerate(recs):
                    if rec is not None:
                        unit = units[u] if units is not None else None
                        add(_from_record(f"{path}.units.{u}", module, rec, unit))
                return
            rec = getattr(module, "last_record", None)
            if rec is None:
                return
            unit = units[0] if units is not None and len(units) == 1 else None
            cap = _from_record(path, module, rec, unit)
            if unit is not None:
                cap.module = module
            add(cap)
        return paused(hook)

    def adapter_hook(path: str, fn: Callable[..., Any]) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            add(_from_adapter_result(path, module, fn(module, inputs, output)))
        return paused(hook)

    def paused(hook: Callable[..., None]) -> Callable[..., None]:
        def run(*a: Any, **k: Any) -> None:
            with watcher.pause():
                hook(*a, **k)
        return run

    def parent_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        parent_calls[id(module)] = (args, kwargs)

    def recognizer_hook(path: str, rec: Recognizer) -> Callable[..., None]:
        parent = parents.get(path)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if state.get("rechecking"):
                return
            if path in state["paths"]:
                return repeated(path)
            if path in failures:
                return None
            pargs, pkw = parent_calls.get(id(parent), (None, None)) if parent is not None \
                else (None, None)
            ctx = CallContext(path, module, args, kwargs, output, heads, parent, pargs, pkw)
            try:
                cap = rec.build(ctx)
            except Exception as exc:  # noqa: BLE001 - one module's failure is its own row
                failures[path] = f"recognizer {rec.name!r} failed: {type(exc).__name__}: {exc}"
                return
            if cap is None:
                return
            cap.path, cap.source = path, rec.source
            cap.module_type, cap.module = type(module).__name__, module
            cap.freeze = rec.freeze
            cap.info.setdefault("family", rec.name)
            seen_here = [o for o in watcher.observations if under(o.owner or ROOT, path)
                         and o.call == watcher.calls.get(o.owner, 0)]
            applied = [o.affinity for o in seen_here]
            what = "watched: " + ", ".join(sorted({o.kind for o in seen_here}))
            if not applied and isinstance(module, nn.MultiheadAttention):
                state["rechecking"] = True
                what = "its own need_weights=True weights"
                try:
                    applied = _mha_applied(module, args, kwargs)
                except Exception:  # noqa: BLE001 - no check is better than a broken forward
                    applied = []
                finally:
                    state["rechecking"] = False
            if applied:
                try:
                    err, how = _cross_check(cap, applied, module, state["batch"], what)
                except Exception as exc:  # noqa: BLE001 - not comparable: say so, keep it
                    err, how = float("nan"), (f"not checked: the applied affinity could not be "
                                              f"laid out ({type(exc).__name__}: {exc})")
                cap.self_check_error, cap.self_check = err, how
                if err > SELF_CHECK_TOL:
                    failures[path] = (f"recognizer {rec.name!r} does not reproduce the module: "
                                      f"{how}")
                    return
            add(cap)
        return paused(hook)

    def add_observed() -> None:
        groups: dict[str, list[Observation]] = {}
        for o in watcher.observations:
            owner = o.owner or ROOT
            if o.call != 0:
                continue
            if any(under(owner, p) for p in covered if p not in failures):
                continue
            groups.setdefault(owner, []).append(o)
        for owner, obs in groups.items():
            module = obs[0].owner_module
            try:
                key = "" if owner == ROOT else owner
                res = watcher.residuals.get(key)
                fields = observed_capture(
                    owner, module, obs, watcher.call_args.get(key), state["batch"], heads,
                    res, None if res is None else watcher.call_args.get(res.layer),
                    own_residual=key in watcher.own_residual)
            except Exception as exc:  # noqa: BLE001
                failures.setdefault(owner, f"observed attention not read: {exc}")
                continue
            why = next((r for p, r in failures.items() if under(owner, p)), None)
            cap = Capture(**fields)
            if why is not None:
                cap.info["recognizer"] = why
            add(cap)

    seen = 0
    paths = {m: ("" if p == ROOT else p) for m, p in names.items()}
    try:
        with reading(model, watcher, paths) as handles:
            for path, module, kind in found:
                if kind == "adapter":
                    handles.append(module.register_forward_hook(
                        adapter_hook(path, adapter_for(module))))
                elif kind == "block":
                    records[module] = module.record
                    module.record = True
                    handles.append(module.register_forward_hook(block_hook(path)))
                else:
                    parent = parents.get(path)
                    if parent is not None:
                        handles.append(parent.register_forward_pre_hook(parent_hook,
                                                                        with_kwargs=True))
                    handles.append(module.register_forward_hook(
                        recognizer_hook(path, recognizer_for(module)), with_kwargs=True))
            batches = _as_batches(inputs_or_loader)
            try:
                total = len(batches)  # type: ignore[arg-type]
            except TypeError:
                total = None
            bar = tqdm(batches, desc="capture", total=total, disable=not progress, leave=False)
            with torch.no_grad():
                for batch in bar:
                    b = batch if forward is not None else (
                        batch if isinstance(batch, Mapping) else batch_input(batch))
                    state["batch"] = _batch_size(b)
                    state["take"] = min(state["batch"], max_samples - seen)
                    state["paths"] = set()
                    parent_calls.clear()
                    watcher.reset()
                    with watcher:
                        run_batch(model, batch, forward, model_kwargs)
                    with watcher.pause():
                        add_observed()
                    seen += state["take"]
                    if seen >= max_samples:
                        break
            bar.close()
    finally:
        for module, flag in records.items():
            module.record = flag
        watcher.reset()
    result = Captures(n_samples=seen)
    for path in order:
        if blocks is not None and not _wanted(path, pieces[path][0], blocks):
            continue
        result[path] = _merge(pieces[path], out_device)
    if missing_error is not None and not result:
        raise missing_error
    result.failures = {p: r for p, r in failures.items() if not any(
        under(q, p) for q in result)}
    if not result:
        result.reason = _nothing_found(model, found, failures, blocks)
    return result


def _wanted(path: str, cap: Capture, blocks: Sequence[str | type]) -> bool:
    return any((isinstance(b, str) and b == path)
               or (isinstance(b, type) and isinstance(cap.module, b)) for b in blocks)


#: where the how-to for models the toolkit does not read is documented
HOWTO = "docs/howto-analyse-your-model.md (adapters and recognizers)"
_ATTENTION_WORDS = ("attn", "attention", "nonlocal", "non_local", "selfattn", "context",
                    "crisscross")


def _nothing_found(model: nn.Module, found: list, failures: dict[str, str],
                   blocks: Any) -> str:
    """Why nothing was captured: the modules that looked like attention and why each was not
    read, and where the how-to is."""
    if blocks is not None:
        return f"no module matches blocks={blocks!r}"
    if found:
        return ("nonlocal modules were found but none ran on these inputs: "
                + ", ".join(p for p, _, _ in found))
    lines = [f"{p}: {r}" for p, r in failures.items()]
    for path, m in model.named_modules():
        name = type(m).__name__.lower()
        if path and any(w in name for w in _ATTENTION_WORDS) and not any(
                path == p or path.startswith(p + ".") for p in failures):
            lines.append(f"{path} ({type(m).__name__}): no affinity over positions was applied "
                         "in its forward (watched: softmax, scaled_dot_product_attention, "
                         "normalized products)")
    head = ("no nonlocal module found (no graphfilters block, no recognized or adapted module, "
            "and no affinity over positions applied to values was seen in the forward pass)")
    listing = ("; looked like attention: " + "; ".join(lines[:12])) if lines else ""
    return f"{head}{listing}; see {HOWTO}"


def _mha_applied(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> list[Tensor]:
    """``nn.MultiheadAttention`` computes inside one opaque function: its applied attention is
    what it returns with ``need_weights=True, average_attn_weights=False`` on the same call."""
    kw = dict(kwargs)
    kw.update(need_weights=True, average_attn_weights=False)
    _, w = module(*args, **kw)
    if w is None:
        return []
    return [w.detach().unsqueeze(0) if w.dim() == 3 else w.detach()]   # unbatched (H, L, S)


def _cross_check(cap: Capture, applied: list[Tensor], module: nn.Module, batch: int,
                 what: str) -> tuple[float, str]:
    """A recognizer's affinity against the one the model applied (head averages), as the
    largest entry difference relative to the largest entry."""
    nh = getattr(module, "num_heads", None)
    nh = nh if isinstance(nh, int) else None
    try:                          # the model's samples (windows of one image are one sample)
        A_obs = applied_affinity(applied, batch, nh)[0]
    except ValueError:            # e.g. a sequence-first input: the capture's own samples
        A_obs = applied_affinity(applied, _affinity_batch(cap.affinity, batch), nh)[0]
    A_obs = A_obs.mean(1).double()
    A_rec = cap.dense_affinity(heads="mean").double()
    if tuple(A_obs.shape) != tuple(A_rec.shape):
        return float("inf"), (f"the recognizer's affinity has shape {tuple(A_rec.shape)}, the "
                              f"applied one {tuple(A_obs.shape)}")
    err = float((A_rec - A_obs).abs().max() / A_obs.abs().max().clamp_min(1e-300))
    return err, (f"max |A_recognized - A_applied| / max |A_applied| = {err:.1e} (the affinity "
                 f"the model applied: {what})")
