"""The ensemble that completions are served from: the current version's, reloaded when another
version becomes current (relief, exact, rollback), with the batcher that decodes its requests
(sisa/serving/batcher.py). The batcher of a version that stopped serving finishes the requests
it began and then stops."""

from __future__ import annotations

import threading

from fastapi import HTTPException

from sisa.config import SisaConfig
from sisa.data.opening import open_store
from sisa.lineage import versions
from sisa.serving import engine as serving
from sisa.serving.batcher import Batcher
from storage.store import Store


class ModelCache:
    """The ensemble of the current version and its batcher, reloaded when another version becomes
    current. A caller keeps what it got, so a running request finishes on its version."""

    def __init__(self, cfg: SisaConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._loaded: tuple[int, serving.Ensemble, Batcher] | None = None
        self.closed = False

    def current_version(self, store: Store | None = None) -> versions.ModelVersion:
        v = versions.current(store or open_store(self.cfg))
        if v is None:
            raise HTTPException(503, "no model version serves yet: run `sisa train` first")
        return v

    def current_batcher(self) -> tuple[versions.ModelVersion, serving.Ensemble, Batcher]:
        store = open_store(self.cfg)
        v = self.current_version(store)
        with self._lock:
            if self.closed:
                raise HTTPException(503, "the server is shutting down")
            if self._loaded is None or self._loaded[0] != v.model_version:
                ens = serving.load_ensemble(store, self.cfg, v.shards)
                if self._loaded is not None:
                    self._loaded[2].close(timeout_s=0, cancel=False)  # ends what it began
                self._loaded = (v.model_version, ens, Batcher(ens, self.cfg.service.max_batch))
            return v, self._loaded[1], self._loaded[2]

    def close(self, timeout_s: float) -> bool:
        """Stop serving: running requests get `timeout_s`, then are cancelled."""
        with self._lock:
            self.closed = True
            loaded, self._loaded = self._loaded, None
        if loaded is None:
            return True
        batcher = loaded[2]
        batcher.close(timeout_s=timeout_s, cancel=False)
        return batcher.close(timeout_s=5.0)
