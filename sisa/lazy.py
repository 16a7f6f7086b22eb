"""Packages whose names load on first use (PEP 562).

A package such as `sisa.model` re-exports names from submodules that import torch, transformers
and peft (seconds). Importing it eagerly made every `sisa` verb pay for all of them, `sisa
versions` included. `exports` gives a package a module-level `__getattr__` that imports the
submodule defining a name when the name is first read, and caches it; a submodule's own name
loads that submodule. `from sisa.model import LengthReport` therefore imports
`sisa.model.lengths` and what it needs, nothing else.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`, given each public name's submodule (relative)."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if name in names:
            value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        else:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
