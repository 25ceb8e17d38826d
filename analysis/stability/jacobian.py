r"""Jacobians of the map a model runs: one block re-run as a function of its input
(:func:`block_function`), full (affinity recomputed) and frozen (affinity held fixed) Jacobian
singular values of a unit, a stage, a stack and the backbone's residual units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from graphfilters import _validate as V
from graphfilters.spectral import SingularValues, top_singular_values

from ..capture import Capture, model_device
from ..frozen_attention import attention_held_fixed, held_count, mha_frozen
from ..observe import eval_mode, hold_affinities, hold_values

__all__ = [
    "AFFINITY_MODES",
    "BACKBONE_UNITS",
    "affinity_path",
    "block_function",
    "frozen_map_starts",
    "jacobian_spectral_norm",
    "frozen_function",
    "StackFunction",
    "jacobian_singular_values",
    "JacobianReport",
    "jacobians",
    "stage_jacobians",
    "stack_jacobians",
    "backbone_jacobians",
]


def _module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for p in module.parameters():
        return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


class _Bound(nn.Module):
    """A module called with extra fixed arguments (eval-mode switching reaches it)."""

    def __init__(self, module: nn.Module, call: Callable[[nn.Module, Tensor], Tensor],
                 freeze: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.inner = module
        self._call = call
        self.freeze = freeze              # the recognizer's own hold, see frozen_function

    def forward(self, x: Tensor) -> Tensor:
        out = self._call(self.inner, x)
        return out[0] if isinstance(out, (tuple, list)) else out


def _attention_call(capture: Capture, index: int, device: torch.device
                    ) -> Callable[[nn.Module, Tensor], Tensor]:
    """How sample ``index`` of ``capture`` is re-run: its ``call`` with that sample's
    ``call_kwargs`` (masks...), or, for older captures of ``nn.MultiheadAttention`` without a
    ``call``, self-attention on the query in the ``(1, E, L)`` layout."""
    if capture.call is not None:
        fn = capture.call
        kw = {k: v[index:index + 1].to(device) for k, v in capture.call_kwargs.items()}
        return lambda module, t: fn(t, **kw)
    batch_first = getattr(capture.module, "batch_first", False)

    def call(module: nn.Module, t: Tensor) -> Tensor:
        q = t.permute(0, 2, 1) if batch_first else t.permute(2, 0, 1)
        out = module(q, q, q, need_weights=False)[0]
        return out.permute(0, 2, 1) if batch_first else out.permute(1, 2, 0)
    return call


def _small_block_capture() -> Capture:
    """A captured SNL block on one small input (the valid call of the declarations)."""
    from graphfilters.blocks import make_block

    from ..capture import capture

    g = torch.Generator().manual_seed(0)
    return capture(make_block("snl", 2), torch.randn(1, 2, 2, 2, generator=g),
                   progress=False)["(root)"]


@V.validate_params({"capture": [V.InstanceOf(Capture)], "index": [V.NONNEG_INT]},
                   valid=lambda: {"capture": _small_block_capture()})
def block_function(capture: Capture, index: int = 0) -> tuple[nn.Module, Tensor]:
    r"""``(f, x)``: the captured map as a function of its input (an ``nn.Module``, so
    :func:`jacobian_spectral_norm` runs it in eval mode), and sample ``index``'s input
    ``(1, C, *spatial)`` on the module's device.

    The map is ``capture.call`` when the capture has one (attention of other libraries:
    tuple outputs, keyword inputs such as masks, and the module's own layout are handled
    there; for a transformer layer it is the residual branch, e.g. ``x + Attn(LN(x))``),
    with sample ``index``'s ``call_kwargs``. Units of a stage that share the stage's affinity
    are called with the captured affinity (held fixed). Otherwise the module itself.

    Examples
    --------
    >>> import torch
    >>> from analysis.capture import capture
    >>> from graphfilters.blocks import make_block
    >>> cap = capture(make_block("snl", 4), torch.randn(2, 4, 3, 3), progress=False)["(root)"]
    >>> fn, x = block_function(cap, index=1)
    >>> x.shape, torch.equal(fn(x), x)                   # a new block is the identity
    (torch.Size([1, 4, 3, 3]), True)
    """
    module = capture.module
    if module is None or capture.input is None:
        raise ValueError(f"{capture.path}: the capture holds no module or input to re-run")
    if not 0 <= index < max(capture.n_samples, 1):
        raise ValueError(f"sample index {index} out of range [0, {capture.n_samples})")
    dtype, dev = _module_dtype_device(module)
    x = capture.input[index:index + 1].to(device=dev, dtype=dtype)
    if capture.call is not None or isinstance(module, nn.MultiheadAttention):
        owner = module if not isinstance(capture.call, nn.Module) else nn.ModuleList(
            [module, capture.call])                       # eval mode reaches the layer too
        freeze = None if capture.freeze is None else (lambda: capture.freeze(capture))
        return _Bound(owner, _attention_call(capture, index, dev), freeze), x
    if getattr(module, "shared_affinity", False) and getattr(module, "theta", 1) is None \
            and capture.affinity is not None:
        aff = capture.affinity.map_fields(lambda t: t[index:index + 1].to(dev))
        return _Bound(module, lambda m, t: m(t, aff)), x
    return _Bound(module, lambda m, t: m(t)), x


@V.validate_params(
    {"n_iter": [V.POS_INT], "tol": [V.UNIT_TOL], "seed": [V.NONNEG_INT],
     "mode": [V.StrOptions(("autograd", "func"))], "affinity": [V.StrOptions(("full", "frozen"))]},
    valid=lambda: {"fn": nn.Linear(3, 3), "x": torch.randn(1, 3)},
)
def jacobian_spectral_norm(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    n_iter: int = 50,
    tol: float = 1e-6,
    seed: int = 0,
    mode: str = "autograd",
    affinity: str = "full",
) -> float:
    r"""Largest singular value of the Jacobian :math:`J = \partial f / \partial x` at ``x``.

    Krylov-accelerated power iteration on :math:`J^T J` (:func:`top_singular_values`, at most
    ``n_iter`` products, relative residual ``tol``). Products with :math:`J^T` are
    vector-Jacobian products; products with :math:`J` are Jacobian-vector products, computed
    with ``mode="autograd"`` by the double-backward identity :math:`J v = \partial_u
    \langle J^T u, v\rangle` on one recorded forward (fast), or with ``mode="func"`` by
    ``torch.func.jvp`` (forward-mode AD) and ``torch.func.vjp``. If double backward is not
    implemented for an operation, it retries with PyTorch's math attention kernel, then uses
    ``func``. ``affinity="full"`` differentiates the module as it runs (affinity recomputed
    from the input); ``"frozen"`` holds the affinity of ``x`` fixed (:func:`frozen_function`).
    Modules run in eval mode (restored afterwards); everything runs on ``x``'s device.
    :func:`jacobian_singular_values` returns the top few values and the convergence.

    Shapes
    ------
    ``x``: any shape (the whole tensor is the input vector, batch included).

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 3, bias=False)
    >>> x = torch.randn(1, 3)
    >>> est = jacobian_spectral_norm(lin, x)
    >>> bool(abs(est - torch.linalg.matrix_norm(lin.weight, 2).item()) < 1e-4)
    True
    """
    return jacobian_singular_values(fn, x, 1, affinity=affinity, tol=tol, max_iter=n_iter,
                                    seed=seed, mode=mode).norm


def _autograd_products(fn: Callable[[Tensor], Tensor], x: Tensor, check: bool = True
                       ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        y = fn(xr)
        if not y.requires_grad:                  # a constant: its Jacobian is zero
            zero_out, zero_in = torch.zeros_like(y), torch.zeros_like(x)
            return (lambda v: zero_out.clone()), (lambda u: zero_in.clone())
        u0 = torch.zeros_like(y, requires_grad=True)
        (gx,) = torch.autograd.grad(y, xr, u0, create_graph=True)

    def jvp(v: Tensor) -> Tensor:
        return torch.autograd.grad(gx, u0, v, retain_graph=True)[0].detach()

    def vjp(u: Tensor) -> Tensor:
        return torch.autograd.grad(y, xr, u, retain_graph=True)[0].detach()

    if check:
        jvp(torch.zeros_like(x))                 # fail now if double backward is missing
    return jvp, vjp


def _func_products(fn: Callable[[Tensor], Tensor], x: Tensor
                   ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    _, vjp_fn = torch.func.vjp(fn, x)

    def jvp(v: Tensor) -> Tensor:
        return torch.func.jvp(fn, (x,), (v,))[1].detach()

    def vjp(u: Tensor) -> Tensor:
        return vjp_fn(u)[0].detach()

    return jvp, vjp


AFFINITY_MODES = ("full", "frozen")


def frozen_function(fn: Callable[[Tensor], Tensor] | nn.Module, x: Tensor
                    ) -> Callable[[Tensor], Tensor]:
    r"""``fn`` with its affinity computed from ``x`` and then held fixed.

    Supported: graphfilters blocks (:class:`~graphfilters.blocks.unified.GraphFilterNonlocal`
    and everything with ``compute_affinity`` and an ``affinity`` argument), stages
    (:class:`~graphfilters.blocks.NonlocalStage`: one affinity of the stage input for all
    units), a shared-affinity unit as returned by :func:`block_function` (already frozen),
    ``nn.MultiheadAttention`` called by :func:`block_function` (``(1, E, L)`` layout), and
    :class:`StackFunction` (each member frozen at its input along ``x``'s trajectory).
    The result is linear in its input up to constants: its Jacobian is
    :math:`J_{fix}`.

    Raises
    ------
    ValueError
        For a module whose affinity cannot be separated from its input.
    """
    from graphfilters.blocks import NonlocalStage

    inner = fn.inner if isinstance(fn, _Bound) else fn
    if isinstance(fn, StackFunction):
        frozen, t = [], x
        with torch.no_grad():
            for m in fn.members:
                frozen.append(frozen_function(m, t))
                t = m(t)
        members = frozen

        def stack(t: Tensor) -> Tensor:
            for f in members:
                t = f(t)
            return t
        return stack
    if isinstance(inner, nn.MultiheadAttention):
        return mha_frozen(inner, x)
    if isinstance(fn, _Bound):
        if getattr(inner, "shared_affinity", False):
            return fn                                     # called with a fixed affinity
        if hasattr(inner, "compute_affinity"):             # a graphfilters block, called plainly
            return frozen_function(inner, x)

        if fn.freeze is not None:                         # the recognizer's own hold
            def own(t: Tensor) -> Tensor:
                with fn.freeze() as hold:
                    out = fn(t)
                if not getattr(hold, "held", 0):
                    raise ValueError(
                        f"{type(inner).__name__}: its recognizer's freeze held no affinity, so "
                        "its frozen Jacobian would be the full one")
                return out
            return own

        return _watched(fn, affinity=True, values=False)      # attention of another library
    if isinstance(fn, NonlocalStage):
        with torch.no_grad():
            aff = fn.compute_affinity(x).detach()

        def stage(t: Tensor) -> Tensor:
            for u in fn.units:
                t = u(t, aff)
            return t
        return stage
    if isinstance(fn, nn.Module) and hasattr(fn, "compute_affinity") \
            and not getattr(fn, "shared_affinity", False):
        with torch.no_grad():
            aff = fn.compute_affinity(x).detach()
        return lambda t: fn(t, aff)
    raise ValueError(
        f"affinity='frozen' needs a graphfilters block or stage or nn.MultiheadAttention, got "
        f"{type(fn).__name__}"
    )


def affinity_path(fn: Callable[[Tensor], Tensor] | nn.Module, x: Tensor
                  ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None:
    r"""``(g, b)``: attention of another library re-run (:func:`block_function`) with the
    *values* of each applied affinity held at ``x`` (the affinity live), and with both held.
    By the chain rule at ``x``, with :math:`F_X` the derivative that bypasses the attention
    (the residual), :math:`F_A A'` the one through the affinity and :math:`F_V V'` through
    its values,

    .. math::

        J_{full} - J_{fix} = (F_X + F_A A' + F_V V') - (F_X + F_V V') = F_A A'
        = J_g - J_b,

    so one product with :math:`g` (and a trivial one with :math:`b`, the identity for a
    residual layer) replaces a full and a frozen one. Exact when every affinity held in
    :math:`J_{fix}` is applied to values held here and no held value depends on a held
    affinity (one attention per call); :func:`jacobians` checks the identity on a random
    vector and otherwise differentiates :math:`J_{full} - J_{fix}` itself. ``None``
    where the affinity is not held by watching the computation (graphfilters blocks,
    stages, stacks, ``nn.MultiheadAttention`` called directly, a recognizer's own hold).

    Examples
    --------
    >>> import torch
    >>> from analysis.capture import capture
    >>> layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
    ...                                          norm_first=True).double().eval()
    >>> cap = capture(layer, torch.randn(1, 5, 8, dtype=torch.float64),
    ...               progress=False)["self_attn"]
    >>> fn, x = block_function(cap)
    >>> g, b = affinity_path(fn, x)
    >>> jac = lambda f: torch.autograd.functional.jacobian(f, x).reshape(40, 40)
    >>> diff = jac(fn) - jac(frozen_function(fn, x))
    >>> bool(torch.allclose(jac(g) - jac(b), diff, atol=1e-12)), bool(jac(b).equal(torch.eye(40)))
    (True, True)
    """
    if not _held_by_watching(fn):
        return None
    return _watched(fn, affinity=False, values=True), _watched(fn, affinity=True, values=True)


def _held_by_watching(fn: Any) -> bool:
    """Whether :func:`frozen_function` holds ``fn``'s affinity by watching its computation
    (a re-run of another library's attention, not one of the forms it knows)."""
    inner = fn.inner if isinstance(fn, _Bound) else None
    return (inner is not None and not isinstance(inner, nn.MultiheadAttention)
            and not getattr(inner, "shared_affinity", False)
            and not hasattr(inner, "compute_affinity") and fn.freeze is None)


def _watched(fn: _Bound, *, affinity: bool, values: bool) -> Callable[[Tensor], Tensor]:
    """``fn`` run with its applied affinities and/or their values held fixed (the SDPA and
    softmax wrappers and a watcher of the applications); a run that held nothing raises."""
    def run(t: Tensor) -> Tensor:
        watcher = hold_values(affinities=affinity) if values else hold_affinities()
        before = held_count()
        with attention_held_fixed(affinity=affinity, values=values), watcher:
            out = fn(t)
        if watcher.held == 0 and held_count() == before:
            raise ValueError(
                f"{type(fn.inner).__name__}: no affinity was held fixed in its forward (none "
                "seen applied), so its frozen Jacobian would be the full one")
        return out
    return run


class StackFunction(nn.Module):
    r"""Modules applied one after another (a trained stack of blocks), as one function.

    Examples
    --------
    >>> import torch
    >>> f = StackFunction([torch.nn.Identity(), torch.nn.Identity()])
    >>> torch.equal(f(torch.ones(2)), torch.ones(2))
    True
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.members:
            x = m(x)
        return x


def _products(fn: Callable[[Tensor], Tensor], x: Tensor, mode: str
              ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    if mode not in ("autograd", "func"):
        raise ValueError(f"mode must be 'autograd' or 'func', got {mode!r}")
    if mode == "autograd":
        # the fused attention kernels (flash, memory-efficient; CPU and CUDA) have no double
        # backward, which the Jacobian-vector products need: PyTorch's math kernel first
        # (a forward with a fused kernel would only fail at the first product, its forward
        # and backward wasted). Its products are checked by their first Jacobian-vector
        # product (no separate check pass): one that fails falls back to the default
        # kernels, then to forward-mode AD
        def fallback() -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
            try:
                return _autograd_products(fn, x)
            except (RuntimeError, NotImplementedError):
                return _func_products(fn, x)

        try:
            with sdpa_kernel([SDPBackend.MATH]):
                first = _autograd_products(fn, x, check=False)
        except (RuntimeError, NotImplementedError):
            return fallback()
        return _checked_on_first_use(first, fallback)
    return _func_products(fn, x)


def _checked_on_first_use(
    products: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]],
    fallback: Callable[[], tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]],
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``products`` whose first Jacobian-vector product, if it fails (no double backward for
    some operation), switches both products to ``fallback()`` for good (the same Jacobian:
    vector-Jacobian products already returned stay valid)."""
    state = {"jvp": products[0], "vjp": products[1], "ok": False}

    def jvp(v: Tensor) -> Tensor:
        if state["ok"]:
            return state["jvp"](v)
        try:
            out = state["jvp"](v)
        except (RuntimeError, NotImplementedError):
            state["jvp"], state["vjp"] = fallback()
            out = state["jvp"](v)
        state["ok"] = True
        return out

    def vjp(u: Tensor) -> Tensor:
        return state["vjp"](u)
    return jvp, vjp


@V.validate_params(
    {"k": [V.POS_INT], "affinity": [V.StrOptions(("full", "frozen"))], "tol": [V.UNIT_TOL],
     "max_iter": [V.POS_INT], "seed": [V.NONNEG_INT],
     "mode": [V.StrOptions(("autograd", "func"))]},
    valid=lambda: {"fn": nn.Linear(3, 3), "x": torch.randn(1, 3)},
)
def jacobian_singular_values(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    k: int = 1,
    *,
    affinity: str = "full",
    tol: float = 1e-6,
    max_iter: int = 100,
    seed: int = 0,
    mode: str = "autograd",
) -> SingularValues:
    r"""The ``k`` largest singular values of :math:`J = \partial f/\partial x` at ``x``,
    matrix-free (:func:`top_singular_values` with Jacobian-vector and vector-Jacobian
    products).

    ``affinity="full"``: the module as it runs (the affinity recomputed from the input, what
    training sees). ``affinity="frozen"``: the affinity computed from ``x`` and held fixed
    (:func:`frozen_function`): :math:`J_{fix}`. Modules run in eval mode (restored
    afterwards); everything runs on ``x``'s device.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 3, bias=False).double()
    >>> sv = jacobian_singular_values(lin, torch.randn(1, 3, dtype=torch.float64), k=3,
    ...                               tol=1e-10)
    >>> ref = torch.linalg.svdvals(lin.weight.detach()).numpy()
    >>> bool(abs(sv.values - ref).max() < 1e-8)
    True
    """
    x = x.detach()
    with eval_mode(fn) if isinstance(fn, nn.Module) else nullcontext():
        f = frozen_function(fn, x) if affinity == "frozen" else fn
        jvp, vjp = _products(f, x, mode)
        return top_singular_values(jvp, vjp, x, k, tol, max_iter, seed=seed)


@dataclass
class JacobianReport:
    r"""Full and frozen Jacobians of one function at one input (:func:`jacobians`).

    Attributes
    ----------
    full, frozen : SingularValues
        :math:`J_{full}` (affinity recomputed) and :math:`J_{fix}` (affinity frozen).
    affinity_share : float
        :math:`\|J_{full} - J_{fix}\|_2 / \|J_{fix} - I\|_2` (residual functions;
        :math:`/\|J_{fix}\|_2` otherwise): how much the affinity's dependence on the input
        adds, relative to what the block adds with the affinity fixed.
    residual : bool
    affinity_path : bool
        :math:`J_{full} - J_{fix}` was multiplied through the values-held function
        (:func:`affinity_path`, one product instead of two), not as the difference.
    """

    full: SingularValues
    frozen: SingularValues
    affinity_share: float
    residual: bool
    affinity_path: bool = False


def jacobians(
    fn: Callable[[Tensor], Tensor] | nn.Module,
    x: Tensor,
    k: int = 3,
    *,
    residual: bool = True,
    tol: float = 1e-6,
    max_iter: int = 100,
    seed: int = 0,
    mode: str = "autograd",
    starts: tuple[Tensor | None, Tensor | None] | None = None,
) -> JacobianReport:
    r"""Full and frozen Jacobian singular values of ``fn`` at ``x``, and the affinity's
    share :math:`\|J_{full} - J_{fix}\| / \|J_{fix} - I\|` (all matrix-free).

    ``starts``: warm starts (shaped like ``x``) for :math:`J_{fix} - I` and :math:`J_{fix}`,
    e.g. the top right singular vectors of a cheaper model of the frozen map
    (:func:`frozen_map_starts`); each is mixed with a random part and every value is still
    certified by its own residual, so a poor start costs products, not accuracy.

    ``fn`` is a unit (:func:`block_function`), a stage
    (:class:`~graphfilters.blocks.NonlocalStage`: the affinity computed from the stage
    input and shared by its units) or a :class:`StackFunction` of trained blocks.

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import make_block
    >>> block = make_block("snl", 4).double()
    >>> rep = jacobians(block, torch.randn(1, 4, 3, 3, dtype=torch.float64), k=1)
    >>> round(rep.full.norm, 6), round(rep.frozen.norm, 6)     # new block: the identity
    (1.0, 1.0)
    """
    x = x.detach()
    with eval_mode(fn) if isinstance(fn, nn.Module) else nullcontext():
        jf, vf = _products(fn, x, mode)
        jz, vz = _products(frozen_function(fn, x), x, mode)
        # warm starts along related maps (each mixed with a random part, see
        # top_singular_values): J_fix - I -> J_fix -> J_full. A ViT-B layer: 23 + 23 + 9
        # products instead of 23 + 29 + 30; J_fix's products are the cheaper ones.
        rest_start, start = starts if starts is not None else (None, None)
        if residual:
            rest = top_singular_values(lambda v: jz(v) - v, lambda u: vz(u) - u, x, 1, tol,
                                       max_iter, v0=rest_start, seed=seed)
            start = rest.vector if start is None else start
        frozen = top_singular_values(jz, vz, x, k, tol, max_iter, v0=start, seed=seed)
        base = rest.norm if residual else frozen.norm
        full = top_singular_values(jf, vf, x, k, tol, max_iter, v0=frozen.vector, seed=seed)
        jd, vd, by_path = _affinity_products(fn, x, mode, (jf, vf), (jz, vz), tol, seed)
        diff = top_singular_values(jd, vd, x, 1, tol, max_iter, seed=seed)
    share = diff.norm / base if base > 0 else (0.0 if diff.norm == 0 else float("inf"))
    return JacobianReport(full, frozen, float(share), residual, by_path)


def _affinity_products(fn: Callable[[Tensor], Tensor], x: Tensor, mode: str,
                       full: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]],
                       frozen: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]],
                       tol: float, seed: int
                       ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], bool]:
    r"""Products with :math:`J_{full} - J_{fix}`: :math:`J_g - J_b` of :func:`affinity_path`
    when it applies and agrees with the difference on a random vector (to ``tol / 10``
    relative), otherwise the difference of the full and frozen products; and which."""
    (jf, vf), (jz, vz) = full, frozen

    def difference() -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], bool]:
        return (lambda v: jf(v) - jz(v)), (lambda u: vf(u) - vz(u)), False

    paths = affinity_path(fn, x)
    if paths is None:
        return difference()
    try:
        (jg, vg), (jb, vb) = _products(paths[0], x, mode), _products(paths[1], x, mode)
    except (ValueError, RuntimeError, NotImplementedError):
        return difference()
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    r = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    ref = jf(r) - jz(r)                 # equal maps: one side checks both (same graphs)
    if float((jg(r) - jb(r) - ref).norm()) > tol / 10 * float(ref.norm()):
        return difference()
    return (lambda v: jg(v) - jb(v)), (lambda u: vg(u) - vb(u)), True


def _rest_start(M: Any, like: Tensor, tol: float, max_iter: int) -> Tensor:
    r"""The top right singular vector of :math:`\mathcal M - I`: of its two factors when it is
    one Kronecker term (:meth:`~analysis.stability.frozen.FrozenMap.kronecker_factors`; an
    ``N x N`` and a ``C x C`` problem), else by products with the whole map."""
    factors = M.kronecker_factors()
    if factors is None:
        return top_singular_values(lambda v: M(v) - v, lambda u: M.adjoint(u) - u, like, 1,
                                   tol, max_iter).vector
    P, W = factors
    p = top_singular_values(lambda v: P @ v, lambda u: P.T @ u, P[:, 0], 1, tol,
                            max_iter).vector
    w = top_singular_values(lambda v: W.T @ v, lambda u: W @ u, W[0], 1, tol,
                            max_iter).vector
    return p[:, None] * w[None, :]


def frozen_map_starts(capture: Capture, x: Tensor, tol: float = 1e-3, max_iter: int = 60,
                      top: Tensor | None = None
                      ) -> tuple[Tensor | None, Tensor | None] | None:
    r"""Warm starts for :func:`jacobians` of a filter capture: the top right singular
    vectors of :math:`\mathcal M - I` and :math:`\mathcal M`, :math:`\mathcal M` the frozen
    map built from the captured weights (:class:`~analysis.stability.frozen.FrozenMap`,
    float32; :math:`\mathcal M - I` from its two factors when it is one Kronecker term;
    for a pre-LN layer its LayerNorm folded at one scale, so a model of
    :math:`J_{fix}`, not :math:`J_{fix}` itself), put in the layout of ``x``
    (``(1, C, *spatial)``). Its products are a few times cheaper than the autograd
    products of :math:`J_{fix}` (ViT-B layer: about 4 ms against 29 ms), and from these
    starts :math:`J_{fix} - I` and :math:`J_{fix}` certify in about 5 products each instead
    of 23. ``None`` when the capture has no frozen map (no weights, a non-square graph) or
    its layout does not match ``x``. ``top``: the top right singular vector of
    :math:`\mathcal M` when it is known (``(N, C)``, e.g. ``Stability.vector`` of the same
    capture), not computed again.

    Examples
    --------
    >>> import torch
    >>> from analysis.capture import capture
    >>> from graphfilters.blocks import make_block
    >>> cap = capture(make_block("snl", 4), torch.randn(2, 4, 3, 3), progress=False)["(root)"]
    >>> fn, x = block_function(cap)
    >>> rest, top = frozen_map_starts(cap, x)
    >>> rest is None, tuple(top.shape)       # a new block is the identity: M - I = 0
    (True, (1, 4, 3, 3))
    """
    from .frozen import FrozenMap

    try:
        M = FrozenMap(capture, 0, dtype=torch.float32)
    except ValueError:
        return None
    n, c = M.shape
    if x.numel() != n * c or x.ndim < 2 or x.shape[0] != 1 or x.shape[1] != c:
        return None
    like = torch.zeros(M.shape, dtype=torch.float32, device=M.G.device)

    def laid_out(v: Tensor | None) -> Tensor | None:
        return None if v is None else v.T.reshape(x.shape).to(dtype=x.dtype, device=x.device)

    with torch.no_grad():
        try:
            if top is None or top.shape != M.shape:
                top = top_singular_values(M, M.adjoint, like, 1, tol, max_iter).vector
            rest = _rest_start(M, like, tol, max_iter) if M.residual else None
        except FloatingPointError:                 # float32 overflow: no starts
            return None
    return laid_out(rest), laid_out(top)


def _small_stage() -> dict[str, Any]:
    from graphfilters.blocks import NonlocalStage

    g = torch.Generator().manual_seed(0)
    return {"stage": NonlocalStage(2, n_units=2).double(),
            "x": torch.randn(1, 2, 2, 2, generator=g, dtype=torch.float64), "k": 1}


@V.validate_params({"stage": [V.MODULE], "x": [V.InstanceOf(Tensor)],
                    "k": [V.POS_INT]}, valid=_small_stage)
def stage_jacobians(stage: nn.Module, x: Tensor, k: int = 3, **options: Any) -> JacobianReport:
    r"""Full and frozen Jacobians of a whole stage: ``k`` units sharing the affinity
    computed from the stage input (:class:`~graphfilters.blocks.NonlocalStage`), at the
    stage input ``x`` (see :func:`jacobians`).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import NonlocalStage
    >>> stage = NonlocalStage(4, n_units=3).double()
    >>> rep = stage_jacobians(stage, torch.randn(1, 4, 3, 3, dtype=torch.float64), k=1)
    >>> round(rep.full.norm, 6)                          # a new stage is the identity
    1.0
    """
    if not hasattr(stage, "units") or not hasattr(stage, "compute_affinity"):
        raise TypeError(f"stage must be a NonlocalStage, got {type(stage).__name__}")
    return jacobians(stage, x, k, residual=True, **options)


def stack_jacobians(modules: Sequence[nn.Module], x: Tensor, k: int = 3,
                    **options: Any) -> JacobianReport:
    r"""Full and frozen Jacobians of trained blocks applied one after another
    (:class:`StackFunction`; frozen: each block's affinity fixed at its own input along
    ``x``'s trajectory).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.blocks import make_block
    >>> blocks = [make_block("nl", 4).double() for _ in range(2)]
    >>> rep = stack_jacobians(blocks, torch.randn(1, 4, 3, 3, dtype=torch.float64), k=1)
    >>> round(rep.frozen.norm, 6)
    1.0
    """
    return jacobians(StackFunction(list(modules)), x, k, residual=True, **options)


#: Residual units of backbones measured by :func:`backbone_jacobians` (by class name).
BACKBONE_UNITS = ("PreActBasicBlock", "PreActBottleneck", "BasicBlock", "Bottleneck")


def backbone_jacobians(
    model: nn.Module,
    x: Tensor,
    *,
    unit_types: Sequence[type | str] = BACKBONE_UNITS,
    k: int = 1,
    tol: float = 1e-4,
    max_iter: int = 60,
    progress: bool = False,
) -> list[dict[str, Any]]:
    r"""Full Jacobian spectral norms of the backbone's own residual units (e.g.
    :class:`~graphfilters.models.PreActBasicBlock`), each at its input on the first sample of
    ``x``: the reference a nonlocal block's value is read against.

    Returns
    -------
    list of dict
        ``{"path", "type", "jacobian_full", "iterations", "residual", "converged"}`` per unit
        (empty when the model has none).

    Examples
    --------
    >>> import torch
    >>> from graphfilters.models import PreResNet
    >>> rows = backbone_jacobians(PreResNet(depth=8, num_classes=3, width=4),
    ...                           torch.randn(2, 3, 8, 8))
    >>> len(rows) > 0, rows[0]["jacobian_full"] > 0
    (True, True)
    """
    names = {t for t in unit_types if isinstance(t, str)}
    types = tuple(t for t in unit_types if isinstance(t, type))
    units = [(p, m) for p, m in model.named_modules()
             if (types and isinstance(m, types)) or type(m).__name__ in names]
    if not units:
        return []
    inputs: dict[str, Tensor] = {}
    handles = []
    for p, m in units:
        def hook(mod: nn.Module, args: tuple, p: str = p) -> None:
            if p not in inputs and args and isinstance(args[0], Tensor):
                inputs[p] = args[0][:1].detach()
        handles.append(m.register_forward_pre_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1].to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for p, m in tqdm(units, desc="backbone", disable=not progress, leave=False):
        if p not in inputs:
            continue
        sv = jacobian_singular_values(m, inputs[p], k, tol=tol, max_iter=max_iter)
        rows.append({"path": p, "type": type(m).__name__, "jacobian_full": sv.norm,
                     "iterations": sv.iterations, "residual": sv.residual,
                     "converged": sv.converged})
    return rows
