"""The architectures :func:`graphfilters.models.build_model` knows: ``config["arch"]`` ->
class, a registry of its own.

Entries are classes or ``"module:Class"`` paths resolved when first used, so the registry
imports neither :mod:`graphfilters.models` nor :mod:`graphfilters.official` (no import cycle:
those modules register here, this module depends on nothing of the package).

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

__all__ = ["ARCHITECTURES", "register_architecture", "get_architecture"]

_ENTRIES: dict[str, type | str] = {
    "preresnet": "graphfilters.models:PreResNet",
    "official": "graphfilters.official:OfficialNet",
}


def register_architecture(name: str, cls: type | str) -> None:
    """Make ``build_model({"arch": name, ...})`` build ``cls`` (a class or a
    ``"module:Class"`` path)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not (isinstance(cls, type) or (isinstance(cls, str) and ":" in cls)):
        raise TypeError(f"cls must be a class or a 'module:Class' path, got {cls!r}")
    _ENTRIES[name] = cls


def get_architecture(name: str) -> type:
    """The class registered as ``name``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    if name not in _ENTRIES:
        raise ValueError(f"config['arch'] must be one of {sorted(_ENTRIES)}, got {name!r}")
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
