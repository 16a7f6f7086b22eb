"""JSON for the typed ledger entries (requests, model versions): one way to write them and to
split what a reader knows from what a newer writer added (kept in `extra`, written back as is)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


def entry_to_dict(entry: Any) -> dict[str, Any]:
    """Fields in declaration order after the unknown keys; enums as their values, nested
    dataclasses through their own `to_dict`, int-keyed maps with sorted string keys."""
    out: dict[str, Any] = dict(entry.extra)
    for f in dataclasses.fields(entry):
        if f.name == "extra":
            continue
        value = getattr(entry, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        elif isinstance(value, dict) and value and all(isinstance(k, int) for k in value):
            value = {str(k): value[k] for k in sorted(value)}
        out[f.name] = value
    return out


def split_known(cls: type, d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the keys `cls` declares, the others)."""
    known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return {k: v for k, v in d.items() if k in known}, {k: v for k, v in d.items() if k not in known and k != "extra"}
