"""What every verb shares: opening the store a config names, printing tables and JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

from sisa.config import SisaConfig
from storage.errors import ConfigError
from storage.store import Store


def open_store(cfg: SisaConfig, create: bool = False) -> Store:
    """Open the store at `store.uri`; with `create`, make it when missing."""
    if create and not Store.exists(cfg.store.uri):
        return Store.create(cfg.store.uri, cfg.sharding.num_shards, cfg.store.seed)
    store = Store.open(cfg.store.uri)
    problems = []
    if store.num_shards != cfg.sharding.num_shards:
        problems.append(
            f"`sharding.num_shards` is {cfg.sharding.num_shards} but the store at {cfg.store.uri} was created "
            f"with {store.num_shards}; shards are fixed for the life of a store"
        )
    if store.seed != cfg.store.seed:
        problems.append(f"`store.seed` is {cfg.store.seed} but the store was created with seed {store.seed}")
    if problems:
        raise ConfigError(problems)
    return store


def print_table(rows: list[dict[str, Any]], columns: list[str], out=None) -> None:
    out = out or sys.stdout
    if not rows:
        out.write("(none)\n")
        return
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"
