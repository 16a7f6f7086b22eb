"""sisa: exact machine unlearning for LoRA-fine-tuned language models.

    import sisa
    store = sisa.open("sisa-store", config="tiny")

`sisa.open` returns a `sisa.SisaStore` (sisa/api.py). Importing this package loads nothing
heavy: the API, and torch with it, load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sisa.api import ServedModel, SisaStore, open

__all__ = ["ServedModel", "SisaStore", "__version__", "open"]


def __getattr__(name: str) -> Any:
    if name in ("open", "SisaStore", "ServedModel"):
        from sisa import api

        return getattr(api, name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("sisa")
        except PackageNotFoundError:  # a checkout that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
