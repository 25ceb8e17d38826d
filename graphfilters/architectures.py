"""The architectures :func:`graphfilters.models.build_model` knows: ``config["arch"]`` ->
class, a registry of its own.

Entries are classes or ``"module:Class"`` paths resolved when first used, so the registry
imports neither :mod:`graphfilters.models` nor :mod:`graphfilters.official` (no import cycle:
those modules register here, this module depends on nothing of the package but
its argument checks, :mod:`graphfilters._validate`).

Examples
--------
>>> from graphfilters.architectures import ARCHITECTURES, get_architecture
>>> sorted(ARCHITECTURES)
['official', 'preresnet']
>>> get_architecture("preresnet").__name__
'PreResNet'
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from . import _validate as V

__all__ = ["ARCHITECTURES", "register_architecture", "get_architecture"]

_ENTRIES: dict[str, type | str] = {
    "preresnet": "graphfilters.models:PreResNet",
    "official": "graphfilters.official:OfficialNet",
}


class _NonEmptyStr(V.Constraint):
    def kind_ok(self, value: Any) -> bool:
        return isinstance(value, str)

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)

    def __str__(self) -> str:
        return "a non-empty str"

    def invalid_values(self) -> list[Any]:
        return ["", 3, None]


class _Entry(V.Constraint):
    def kind_ok(self, value: Any) -> bool:
        return isinstance(value, (type, str))

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, type) or (isinstance(value, str) and ":" in value)

    def __str__(self) -> str:
        return "a class or a 'module:Class' path"

    def invalid_values(self) -> list[Any]:
        return ["PreResNet", 3, None]


class _Registered(V.StrOptions):
    """A registered name, read when checked (later registrations count). A missing name
    (``None``, e.g. a config without ``"arch"``) is an unknown name (``ValueError``, as
    :func:`graphfilters.models.build_model` documents), another non-str a ``TypeError``."""

    def __init__(self) -> None:
        super().__init__(lambda: sorted(_ENTRIES))

    def kind_ok(self, value: Any) -> bool:
        return value is None or super().kind_ok(value)


@V.validate_params({"name": [_NonEmptyStr()], "cls": [_Entry()]},
                   valid=lambda: {"name": "preresnet", "cls": _ENTRIES["preresnet"]})
def register_architecture(name: str, cls: type | str) -> None:
    """Make ``build_model({"arch": name, ...})`` build ``cls`` (a class or a
    ``"module:Class"`` path)."""
    _ENTRIES[name] = cls


@V.validate_params({"name": [_Registered()]}, valid=lambda: {"name": "preresnet"})
def get_architecture(name: str) -> type:
    """The class registered as ``name``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    entry = _ENTRIES[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = _ENTRIES[name] = getattr(importlib.import_module(module), attr)
    return entry


class _Architectures(Mapping):
    """A read-only view of the registry (classes resolved on access)."""

    def __getitem__(self, name: str) -> type:
        if name not in _ENTRIES:
            raise KeyError(name)
        return get_architecture(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(_ENTRIES))

    def __len__(self) -> int:
        return len(_ENTRIES)

    def __repr__(self) -> str:
        return f"ARCHITECTURES({sorted(_ENTRIES)})"


#: ``config["arch"]`` -> class, as :func:`graphfilters.models.build_model` reads it.
ARCHITECTURES: Mapping[str, type] = _Architectures()
