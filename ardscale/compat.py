"""Public names that moved: using one fails with an ImportError that names its new place (a
module ``__getattr__``, PEP 562), rather than with Python's bare "cannot import name"."""
from __future__ import annotations

from collections.abc import Callable


def moved(module: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``module`` whose ``names`` (old name → where it is now) moved.

    Raises (when called):
        ImportError: a moved name (also for ``from module import name``).
        AttributeError: any other missing name.
    """
    def __getattr__(name: str) -> object:
        if name in names:
            raise ImportError(f"{module}.{name} moved: use {names[name]}")
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
