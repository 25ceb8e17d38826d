"""Where a warning points: the first frame outside the toolkit (as pandas'
``find_stack_level``), so that a warning names the researcher's line, not a frame of the
argument-check decorator or of a helper between it and the public function.
"""

from __future__ import annotations

import inspect
import os

__all__ = ["external_stacklevel"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The package directories whose frames a warning skips.
PACKAGE_DIRS = tuple(os.path.join(_ROOT, name) + os.sep for name in ("graphfilters", "analysis"))


def external_stacklevel() -> int:
    """The ``stacklevel`` of :func:`warnings.warn` that points at the first caller outside
    ``graphfilters`` and ``analysis``.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     warnings.warn("x", stacklevel=external_stacklevel())
    >>> seen[0].filename.startswith(PACKAGE_DIRS)        # this doctest is outside: itself
    False
    """
    frame = inspect.currentframe()
    level = 0
    try:
        while frame is not None and inspect.getfile(frame).startswith(PACKAGE_DIRS):
            frame = frame.f_back
            level += 1
    finally:
        del frame
    return max(level, 1)
