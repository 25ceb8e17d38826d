"""Argument checks shared by the public functions (one implementation per check).

Every check names the caller's argument and the value received, and raises before any
allocation that depends on the value. Conventions: ``TypeError`` for a value of the wrong
kind (a string where a number is expected, a bool where an integer is), ``ValueError`` for a
value of the right kind out of range (zero, negative, NaN, Inf, an empty array).

Half-precision policy
---------------------
float16 and bfloat16 inputs are accepted everywhere. Where a reduction or an eigen-solve could
overflow or has no half-precision kernel (degrees, normalizations, Laplacians, softmax logits,
``lambda_max``, spectra) the computation runs in float32 (:func:`compute_dtype`) and results
are returned in the input's dtype; a result that does not fit that dtype (e.g. a degree above
65504 in float16) raises ``ValueError`` naming the argument instead of returning Inf/NaN.
Spectra and ``lambda_max`` return float32 for half inputs (an eigenvalue is an analysis result,
not a model activation). A block with float32 parameters refuses a float16 input outside
``torch.autocast`` (cast the input or the block).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"an array of shape {tuple(value.shape)} ({value.dtype})"
    return f"{value!r} ({type(value).__name__})"


def integer(value: Any, name: str, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (bools, floats and strings refused).

    Examples
    --------
    >>> integer(3, "order", minimum=0)
    3
    >>> integer(-1, "order", minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: order must be an integer >= 0, got -1 (int)
    """
    check(value, name, [Interval(Integral, minimum, maximum, closed="both")])
    return int(value)


def positive_int(value: Any, name: str, maximum: int | None = None) -> int:
    """An integer ``>= 1``."""
    return integer(value, name, minimum=1, maximum=maximum)


def real(value: Any, name: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False) -> float:
    """A finite real number (not a string, bool or array) in ``[low, high]`` (``(low, high]``
    with ``low_open``).

    Examples
    --------
    >>> real("2", "lambda_max")
    Traceback (most recent call last):
    ...
    TypeError: lambda_max must be a real number, got '2' (str)
    """
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        value = value.item()
    if not _is_number(value):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value:g}")
    return value


def positive_float(value: Any, name: str) -> float:
    """A finite number ``> 0``."""
    return real(value, name, low=0.0, low_open=True)


def choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    """One of ``allowed`` (strings)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(allowed)}")
    return value


def nonempty(x: Any, name: str) -> None:
    """Refuse arrays with a zero-size axis (no nodes, no channels, an empty batch)."""
    shape = tuple(x.shape)
    if any(s == 0 for s in shape):
        raise ValueError(
            f"{name} is empty (shape {shape}); a graph needs at least one node and signals "
            "at least one channel"
        )


def compute_dtype(x: Any) -> Any:
    """The dtype to compute in: float32 for half-precision tensors, the input's otherwise."""
    if isinstance(x, torch.Tensor) and x.dtype in HALF_DTYPES:
        return torch.float32
    return x.dtype


def upcast(x: Any) -> Any:
    """``x`` in its :func:`compute_dtype`."""
    if isinstance(x, torch.Tensor) and x.dtype in HALF_DTYPES:
        return x.float()
    return x


def downcast(out: Any, like: Any, name: str, what: str) -> Any:
    """``out`` back in ``like``'s half dtype, refusing values the dtype cannot hold."""
    if not (isinstance(like, torch.Tensor) and like.dtype in HALF_DTYPES):
        return out
    fmax = torch.finfo(like.dtype).max
    if isinstance(out, torch.Tensor) and out.numel() and bool(
            (out.detach().abs() > fmax).any()):
        raise ValueError(
            f"{name} is {like.dtype} but its {what} exceeds the largest {like.dtype} "
            f"({fmax:g}); pass {name} as float32"
        )
    return out.to(like.dtype) if isinstance(out, torch.Tensor) else out


# --------------------------------------------------------------------------------------------
# Declarative constraints (scikit-learn's ``validate_params`` model)
# --------------------------------------------------------------------------------------------


class Constraint:
    """A condition on one argument, declared as data.

    A constraint knows whether a value has an acceptable *kind* (:meth:`kind_ok`: a wrong
    kind is a ``TypeError``) and whether it is acceptable (:meth:`is_satisfied_by`: a right
    kind out of range is a ``ValueError``), describes itself in words (``str``) for the one
    message every check shares, and proposes values that break it (:meth:`invalid_values`,
    scikit-learn's ``generate_invalid_param_val``) for the generated tests.
    """

    def kind_ok(self, value: Any) -> bool:
        return self.is_satisfied_by(value)

    def is_satisfied_by(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def invalid_values(self) -> list[Any]:
        return []


def _unwrap0d(value: Any) -> Any:
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0 and not (
            isinstance(value, torch.Tensor) and value.is_complex()):
        return value.item()
    return value


class Interval(Constraint):
    """A number in an interval: ``Interval(Integral, 0, None, closed="left")`` is an int
    ``>= 0`` (bools refused), ``Interval(Real, 0, None, closed="neither")`` a finite real
    ``> 0`` (0-d arrays and tensors accepted; NaN and Inf refused).

    Examples
    --------
    >>> str(Interval(Integral, 1, 32, closed="both"))
    'an integer in [1, 32]'
    >>> str(Interval(Real, 0, None, closed="neither"))
    'a finite real number > 0'
    """

    def __init__(self, type: type, left: float | None, right: float | None, *,
                 closed: str = "both") -> None:
        if type not in (Integral, Real):
            raise ValueError("Interval type must be numbers.Integral or numbers.Real")
        if closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"unknown closed {closed!r}")
        self.type, self.left, self.right, self.closed = type, left, right, closed

    def kind_ok(self, value: Any) -> bool:
        value = _unwrap0d(value) if self.type is Real else value
        return isinstance(value, self.type) and not isinstance(value, bool)

    def is_satisfied_by(self, value: Any) -> bool:
        kind = type(value)
        if kind is int or (kind is float and self.type is Real):
            # a plain Python number (the common case, e.g. a kernel's scale on every forward):
            # no kind test, no 0-d unwrapping
            if kind is float and not math.isfinite(value):
                return False
        else:
            if not self.kind_ok(value):
                return False
            value = _unwrap0d(value)
            if self.type is Real and not math.isfinite(float(value)):
                return False
        lo_closed = self.closed in ("left", "both")
        hi_closed = self.closed in ("right", "both")
        if self.left is not None and (value < self.left if lo_closed else value <= self.left):
            return False
        if self.right is not None and (value > self.right if hi_closed
                                       else value >= self.right):
            return False
        return True

    def __str__(self) -> str:
        what = "an integer" if self.type is Integral else "a finite real number"
        lo_closed = self.closed in ("left", "both")
        hi_closed = self.closed in ("right", "both")
        fmt = "{:d}" if self.type is Integral else "{:g}"
        if self.left is not None and self.right is not None:
            lo, hi = fmt.format(self.left), fmt.format(self.right)
            return f"{what} in {'[' if lo_closed else '('}{lo}, {hi}{']' if hi_closed else ')'}"
        if self.left is not None:
            return f"{what} {'>=' if lo_closed else '>'} {fmt.format(self.left)}"
        if self.right is not None:
            return f"{what} {'<=' if hi_closed else '<'} {fmt.format(self.right)}"
        return what

    def invalid_values(self) -> list[Any]:
        out: list[Any] = ["1", True, None]
        if self.left is not None:
            out.append(self.left - 1 if self.closed in ("left", "both") else self.left)
        if self.right is not None:
            out.append(self.right + 1 if self.closed in ("right", "both") else self.right)
        out += [2.5] if self.type is Integral else [math.nan, math.inf]
        return out


class Options(Constraint):
    """One of a set of values of a type: ``Options(str, {"sym", "rw"})``. ``options`` may
    be a function returning them, read when a value is checked (a registry that grows:
    names registered later are accepted).

    Examples
    --------
    >>> names = ["a"]
    >>> live = Options(str, lambda: names)
    >>> names.append("b")
    >>> live.is_satisfied_by("b"), str(live)
    (True, "one of ['a', 'b']")
    """

    def __init__(self, type: type, options: Any) -> None:
        self.type = type
        self._options = options if callable(options) else tuple(options)

    @property
    def options(self) -> tuple[Any, ...]:
        return tuple(self._options()) if callable(self._options) else self._options

    def kind_ok(self, value: Any) -> bool:
        return isinstance(value, self.type) and not (isinstance(value, bool)
                                                     and self.type is not bool)

    def is_satisfied_by(self, value: Any) -> bool:
        return self.kind_ok(value) and value in self.options

    def __str__(self) -> str:
        return f"one of {list(self.options)}"

    def invalid_values(self) -> list[Any]:
        return ["not-an-option", 3, None]


class StrOptions(Options):
    """One of a set of strings: ``StrOptions({"exact", "lanczos"})`` (order kept for a
    tuple, sorted for a set).

    Examples
    --------
    >>> str(StrOptions(("exact", "power")))
    "one of ['exact', 'power']"
    """

    def __init__(self, options: Any) -> None:
        super().__init__(str, sorted(options) if isinstance(options, (set, frozenset))
                         else options)                     # a tuple, a list or a function


class _Boolean(Constraint):
    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def __str__(self) -> str:
        return "a bool"

    def invalid_values(self) -> list[Any]:
        return ["yes", 2]


class _NoneConstraint(Constraint):
    def is_satisfied_by(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


class _Callable(Constraint):
    def is_satisfied_by(self, value: Any) -> bool:
        return callable(value)

    def __str__(self) -> str:
        return "a callable"

    def invalid_values(self) -> list[Any]:
        return [3.0, "exp"]


def is_array_like(value: Any) -> bool:
    """Whether ``value`` is a numpy array, a torch tensor, a list/tuple or a number (what
    the numeric functions convert), not a string, None or another object."""
    return isinstance(value, (np.ndarray, torch.Tensor, list, tuple, np.generic)) or (
        _is_number(value))


class ArrayLike(Constraint):
    """An array or tensor, with an optional number of dimensions (``ndim``: an int, or a
    ``(min, max)`` pair with ``None`` for no bound) and real dtype.

    Only the kind and the number of dimensions are checked here; shapes relative to other
    arguments, emptiness and NaN are the functions' own checks (they need the other
    arguments, or a scan).

    Examples
    --------
    >>> str(ArrayLike(ndim=(2, None)))
    'an array or tensor with at least 2 dimensions'
    """

    def __init__(self, ndim: int | tuple[int | None, int | None] | None = None) -> None:
        self.ndim = (ndim, ndim) if isinstance(ndim, int) else ndim

    def kind_ok(self, value: Any) -> bool:
        if not is_array_like(value):
            return False
        if isinstance(value, torch.Tensor):
            return not value.is_complex()
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):     # ragged nested lists
            return False
        return arr.dtype.kind in "biuf"

    def is_satisfied_by(self, value: Any) -> bool:
        if not self.kind_ok(value):
            return False
        if self.ndim is None:
            return True
        nd = value.ndim if hasattr(value, "ndim") else np.ndim(value)
        lo, hi = self.ndim
        return (lo is None or nd >= lo) and (hi is None or nd <= hi)

    def __str__(self) -> str:
        base = "a numpy array or a torch tensor (real)"
        if self.ndim is None:
            return base
        lo, hi = self.ndim
        if lo == hi:
            return f"{base} with {lo} dimension{'s' if lo != 1 else ''}"
        if hi is None:
            return f"an array or tensor with at least {lo} dimensions"
        return f"an array or tensor with {lo} to {hi} dimensions"

    def invalid_values(self) -> list[Any]:
        out: list[Any] = ["x", None, np.array([1j]), np.array([None], dtype=object)]
        if self.ndim is not None:
            lo, hi = self.ndim
            if lo:
                out.append(np.ones((1,) * (lo - 1)))
            if hi is not None:
                out.append(np.ones((1,) * (hi + 1)))
        return out


class InstanceOf(Constraint):
    """An instance of ``type`` (a class, a tuple of classes, or a function returning them,
    for a class defined below the function that names it)."""

    def __init__(self, type: Any, name: str | None = None) -> None:
        self._type = type
        self.name = name

    @property
    def type(self) -> Any:
        t = self._type
        return t if isinstance(t, (type, tuple)) else t()

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, self.type)

    def __str__(self) -> str:
        if self.name:
            return self.name
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return "an instance of " + " or ".join(t.__name__ for t in types)

    def invalid_values(self) -> list[Any]:
        return ["x", 1.5]


class Each(Constraint):
    """A collection (not a string) whose every item satisfies ``item`` (a constraint, or a
    function returning one, for options read only when a value is checked), non-empty unless
    ``nonempty=False``. A wrong kind of collection or of an item is a ``TypeError``.

    Examples
    --------
    >>> str(Each(Interval(Integral, 1, None, closed="left")))
    'a non-empty sequence whose items are each an integer >= 1'
    >>> Each(StrOptions(("a", "b"))).is_satisfied_by(("a", "c"))
    False
    """

    def __init__(self, item: Any, *, nonempty: bool = True, name: str | None = None) -> None:
        self._item, self.nonempty, self.name = item, nonempty, name

    @property
    def item(self) -> Constraint:
        return make_constraint(self._item if isinstance(self._item, Constraint)
                               or not callable(self._item) else self._item())

    def kind_ok(self, value: Any) -> bool:
        item = self.item
        return isinstance(value, Collection) and not isinstance(value, (str, bytes)) and all(
            item.kind_ok(v) for v in value)

    def is_satisfied_by(self, value: Any) -> bool:
        item = self.item
        return self.kind_ok(value) and (len(value) > 0 or not self.nonempty) and all(
            item.is_satisfied_by(v) for v in value)

    def __str__(self) -> str:
        if self.name:
            return self.name
        return f"a {'non-empty ' if self.nonempty else ''}sequence whose items are each {self.item}"

    def invalid_values(self) -> list[Any]:
        bad = [(v,) for v in self.item.invalid_values()[:4]]
        return ["x", *([()] if self.nonempty else []), *bad]


class NoiseLevels(Constraint):
    """A sequence (not a string) of finite numbers ``>= 0``: noise levels, standard
    deviations.

    Examples
    --------
    >>> NoiseLevels().is_satisfied_by((0.0, 0.1)), NoiseLevels().is_satisfied_by((-1,))
    (True, False)
    """

    _level = Interval(Real, 0, None, closed="left")

    def kind_ok(self, value: Any) -> bool:
        return isinstance(value, (list, tuple, np.ndarray)) and not isinstance(value, str)

    def is_satisfied_by(self, value: Any) -> bool:
        return self.kind_ok(value) and all(self._level.is_satisfied_by(v) for v in value)

    def __str__(self) -> str:
        return "a sequence of finite noise levels >= 0"

    def invalid_values(self) -> list[Any]:
        return ["0.1", (-0.1,), (math.nan,), 0.1]


_NAMED: dict[str, Constraint] = {
    "boolean": _Boolean(),
    "callable": _Callable(),
    "array-like": ArrayLike(),
}


def make_constraint(c: Any) -> Constraint:
    """A :class:`Constraint` from its declaration: a constraint object, ``None``, a type,
    or one of the names ``"boolean"``, ``"callable"``, ``"array-like"``."""
    if isinstance(c, Constraint):
        return c
    if c is None:
        return _NoneConstraint()
    if isinstance(c, str):
        if c not in _NAMED:
            raise ValueError(f"unknown constraint name {c!r}; choose one of {list(_NAMED)}")
        return _NAMED[c]
    if isinstance(c, type):
        return InstanceOf(c)
    raise TypeError(f"cannot make a constraint from {c!r}")


def _words(constraints: list[Constraint]) -> str:
    texts = [str(c) for c in constraints]
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


def check(value: Any, name: str, constraints: list[Constraint], where: str = "") -> Any:
    """``value`` if some constraint holds; else the one message of every declared check,
    ``"{where}: {name} must be {constraints}, got {value}"``: ``TypeError`` when no
    constraint accepts the value's kind, ``ValueError`` when one does but the value is out
    of its range or options.

    Examples
    --------
    >>> check(-1, "order", [Interval(Integral, 0, None, closed="left")], "spectral_density")
    Traceback (most recent call last):
    ...
    ValueError: spectral_density: order must be an integer >= 0, got -1 (int)
    """
    for c in constraints:
        if c.is_satisfied_by(value):
            return value
    prefix = f"{where}: " if where else ""
    message = f"{prefix}{name} must be {_words(constraints)}, got {_describe(value)}"
    if any(c.kind_ok(value) for c in constraints):
        raise ValueError(message)
    raise TypeError(message)


@dataclass(frozen=True)
class Registration:
    """One function declared with :func:`validate_params`: its constraints and a factory
    of valid arguments (``valid()`` returns the keyword arguments of a valid call; a
    method's includes ``self``, a constructor's are the class's arguments)."""

    func: Callable[..., Any]
    qualname: str
    module: str
    constraints: dict[str, list[Constraint]]
    valid: Callable[[], dict[str, Any]] | None

    @property
    def where(self) -> str:
        return _where(self.qualname)

    def target(self) -> Callable[..., Any]:
        """What a test calls with ``valid()``'s arguments (the class for a constructor)."""
        if self.qualname.endswith(".__init__"):
            import importlib

            obj: Any = importlib.import_module(self.module)
            for part in self.qualname.split(".")[:-1]:
                obj = getattr(obj, part)
            return obj
        return self.func


#: Every function declared with :func:`validate_params`, by ``module.qualname``.
REGISTRY: dict[str, Registration] = {}


def _where(qualname: str) -> str:
    return qualname[: -len(".__init__")] if qualname.endswith(".__init__") else qualname


def validate_params(
    constraints: dict[str, list[Any]], *, valid: Callable[[], dict[str, Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the constraints of a function's arguments; check them on every call.

    ``constraints`` maps an argument name to a list of constraints (any one may hold):
    :class:`Interval`, :class:`StrOptions`, :class:`Options`, :class:`ArrayLike`,
    :class:`InstanceOf`, ``"boolean"``, ``"callable"``, ``"array-like"``, ``None``, a type.
    A violated constraint raises the shared message naming the function and the argument
    (:func:`check`). The signature is read once, at decoration time; a call costs one tuple
    or dict look-up per constrained argument given (defaults are checked once, at
    decoration). The function is recorded in :data:`REGISTRY` with ``valid`` (a factory of
    the keyword arguments of a valid call) so that tests can substitute invalid values one
    argument at a time.

    Examples
    --------
    >>> @validate_params({"order": [Interval(Integral, 0, None, closed="left")]},
    ...                  valid=lambda: {"order": 2})
    ... def f(order=3):
    ...     return order
    >>> f(order=-1)
    Traceback (most recent call last):
    ...
    ValueError: f: order must be an integer >= 0, got -1 (int)
    """
    declared = {name: [make_constraint(c) for c in cs] for name, cs in constraints.items()}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func)
        where = _where(func.__qualname__)
        checks = []
        for name, cs in declared.items():
            if name not in sig.parameters:
                raise ValueError(f"{where}: validate_params names {name!r}, not an argument")
            p = sig.parameters[name]
            pos = (list(sig.parameters).index(name)
                   if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else None)
            if p.default is not p.empty:
                check(p.default, name, cs, where)       # a declaration error, found at import
            checks.append((name, pos, cs))
        checks = tuple(checks)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            n = len(args)
            for name, pos, cs in checks:
                if pos is not None and pos < n:
                    check(args[pos], name, cs, where)
                elif name in kwargs:
                    check(kwargs[name], name, cs, where)
            return func(*args, **kwargs)

        key = f"{func.__module__}.{func.__qualname__}"
        REGISTRY[key] = Registration(func=wrapper, qualname=func.__qualname__,
                                     module=func.__module__, constraints=declared, valid=valid)
        wrapper.__wrapped_constraints__ = declared  # type: ignore[attr-defined]
        return wrapper

    return decorate


class DeclaredFields:
    """A dataclass whose fields are declared: ``constraints`` (a class-level mapping of field
    name to constraint list, as :func:`validate_params` takes) is checked when an instance is
    built (``__post_init__``, the shared messages naming the class), and the class is recorded
    in :data:`REGISTRY` with its defaults as the valid call, so that the generated
    invalid-input tests cover its fields. A subclass with its own ``__post_init__`` calls
    ``super().__post_init__()`` first. A field passed on unchanged to a function reuses that
    function's declaration (:func:`declared`).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Options(DeclaredFields):
    ...     constraints = {"order": [Interval(Integral, 0, None, closed="left")]}
    ...     order: int = 2
    >>> Options(order=-1)
    Traceback (most recent call last):
    ...
    ValueError: Options: order must be an integer >= 0, got -1 (int)
    """

    constraints: ClassVar[dict[str, list[Any]]] = {}
    _declared: ClassVar[dict[str, list[Constraint]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = {n for klass in cls.__mro__ for n in getattr(klass, "__annotations__", {})}
        unknown = sorted(set(cls.constraints) - fields)
        if unknown:
            raise ValueError(f"{cls.__qualname__}: constraints name {unknown}, not fields")
        cls._declared = {name: [make_constraint(c) for c in cs]
                         for name, cs in cls.constraints.items()}
        if cls._declared and "<locals>" not in cls.__qualname__:
            qualname = f"{cls.__qualname__}.__init__"
            REGISTRY[f"{cls.__module__}.{qualname}"] = Registration(
                func=cls, qualname=qualname, module=cls.__module__,
                constraints=cls._declared, valid=dict)

    def __post_init__(self) -> None:
        where = type(self).__name__
        for name, cs in self._declared.items():
            check(getattr(self, name), name, cs, where)


_SCRATCH: dict[str, str] = {}


def scratch_dir() -> str:
    """A temporary folder for the valid calls of declarations that read or write files (a
    tiny checkpoint, a tiny data set): made once per process (again if it was removed) and
    removed at exit."""
    import atexit
    import shutil
    import tempfile

    folder = _SCRATCH.get("dir")
    if folder is None or not os.path.isdir(folder):
        folder = _SCRATCH["dir"] = tempfile.mkdtemp(prefix="graphfilters-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def declared(func: Callable[..., Any], name: str) -> list[Constraint]:
    """The constraints ``func`` declares for its argument ``name`` (with
    :func:`validate_params`), for a declaration that passes the argument on unchanged (a
    configuration field, a wrapper) to state it once.

    Examples
    --------
    >>> @validate_params({"order": [Interval(Integral, 0, None, closed="left")]})
    ... def f(order=3):
    ...     return order
    >>> [str(c) for c in declared(f, "order")]
    ['an integer >= 0']
    """
    table = getattr(func, "__wrapped_constraints__", None)
    if table is None or name not in table:
        raise ValueError(f"{getattr(func, '__qualname__', func)!r} declares no constraint for "
                         f"{name!r}")
    return list(table[name])


def invalid_values(constraints: list[Constraint]) -> list[Any]:
    """Values that satisfy none of ``constraints`` (each constraint's proposals and a few
    generic wrong kinds, filtered), for the generated invalid-input tests."""
    pool: list[Any] = []
    for c in constraints:
        pool += c.invalid_values()
    pool += [object(), "x", None, -1, 2.5, math.nan]
    out, seen = [], set()
    for v in pool:
        key = (type(v).__name__, repr(v))
        if key in seen or any(c.is_satisfied_by(v) for c in constraints):
            continue
        seen.add(key)
        out.append(v)
    return out


#: shorthand constraints used across the package
NONNEG_INT = Interval(Integral, 0, None, closed="left")
POS_INT = Interval(Integral, 1, None, closed="left")
POS_REAL = Interval(Real, 0, None, closed="neither")
NONNEG_REAL = Interval(Real, 0, None, closed="left")
REAL = Interval(Real, None, None)
#: a relative tolerance: a finite real in (0, 1)
UNIT_TOL = Interval(Real, 0, 1, closed="neither")
#: A file-system path.
PATH = InstanceOf((str, os.PathLike), "a path (str or os.PathLike)")
#: A mapping (a dict of options).
MAPPING = InstanceOf(Mapping, "a mapping")
#: A PyTorch module.
MODULE = InstanceOf(torch.nn.Module, "a torch.nn.Module")
