"""Lazy public names of a sub-package (PEP 562): `from beear_stage.methods import BEEAR` imports
`methods/beear.py` on first use, so importing one module of a sub-package loads no other."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` resolving `name` to `<package>.<exports[name]>.<name>`."""

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
