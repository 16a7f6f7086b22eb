"""Helpers shared by test folders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_digest(root: Path | str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every folder and file under `root` with its sha256 (files in `skip`, relative paths, left
    out): a store's exact state, to prove an operation changed nothing."""
    root = str(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames.sort()
        out[rel + "/"] = "dir"
        for name in sorted(filenames):
            path = os.path.join(rel, name)
            if path in skip:
                continue
            with open(os.path.join(dirpath, name), "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out
