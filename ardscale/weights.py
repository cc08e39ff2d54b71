"""Model weights shipped inside registry packages (MiniLM, the I3D, the Inception): located on disk
without importing the package (their imports are heavy or have side effects), and hash-checked
before a byte is used. Nothing is ever downloaded."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def package_file(package: str, relpath: str, install: str) -> Path:
    """``relpath`` inside the installed ``package``'s folder (found with ``importlib.util.find_spec``,
    which does not run the package).

    Raises:
        FileNotFoundError: the package is not installed (the message gives ``install``, the pip line).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations))) / relpath


def check_sha256(data: bytes, pinned: str, what: str) -> None:
    """Raises ValueError naming ``what`` (a file) when ``data``'s sha256 is not ``pinned``."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != pinned:
        raise ValueError(f"{what}: sha256 {digest} is not the pinned {pinned}; refusing to load it")
