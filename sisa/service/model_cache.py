"""The ensemble that completions are served from: the current version's, reloaded when another
version becomes current (relief, exact, rollback)."""

from __future__ import annotations

import threading
from typing import Any

from fastapi import HTTPException

from sisa.config import SisaConfig
from sisa.data.opening import open_store
from sisa.lineage import versions
from sisa.serving import engine as serving


class ModelCache:
    """The ensemble of the current version, reloaded when another version becomes current. A
    caller keeps the (version, ensemble) pair it got, so a running request finishes on it."""

    def __init__(self, cfg: SisaConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._loaded: tuple[int, Any] | None = None

    def current(self) -> tuple[versions.ModelVersion, Any]:
        store = open_store(self.cfg)
        v = versions.current(store)
        if v is None:
            raise HTTPException(503, "no model version serves yet: run `sisa train` first")
        with self._lock:
            if self._loaded is None or self._loaded[0] != v.model_version:
                self._loaded = (v.model_version, serving.load_ensemble(store, self.cfg, v.shards))
            return v, self._loaded[1]
