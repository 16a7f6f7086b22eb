"""The ensemble that completions are served from: the current version's, reloaded when another
version becomes current (relief, exact, rollback), with what decodes its requests: sisa's
batcher (sisa/serving/batcher.py), or with `serving.engine: vllm` the route to a vLLM server
(sisa/serving/vllm_route.py), which loads the version's adapters into vLLM first. What decoded
for a version that stopped serving finishes the requests it began and then stops; with vLLM,
the adapters no serving version needs are unloaded then."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from fastapi import HTTPException

from sisa.config import SisaConfig
from sisa.data.opening import open_store
from sisa.lineage import versions
from sisa.serving import engine as serving
from sisa.serving.batcher import Batcher
from sisa.serving.vllm_adapters import VllmAdapters
from sisa.serving.vllm_client import VllmClient
from sisa.serving.vllm_route import VllmRoute
from sisa.serving.vllm_server import VllmServer, vllm_url
from sisa.storage.errors import SisaError
from sisa.storage.store import Store

Decoder = Batcher | VllmRoute


class ModelCache:
    """The ensemble of the current version and its decoder, reloaded when another version becomes
    current. A caller keeps what it got, so a running request finishes on its version."""

    def __init__(self, cfg: SisaConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._loaded: tuple[int, serving.Ensemble, Decoder] | None = None
        self.closed = False
        self.vllm_server: VllmServer | None = None
        self.vllm: VllmAdapters | None = None
        self._routes = itertools.count()

    def start(self, say: Callable[[str], None] = print) -> None:
        """With `serving.engine: vllm`: start the loopback vLLM server (when `service.vllm_url` is
        empty) or check the user's answers."""
        if self.cfg.serving.engine != "vllm":
            return
        if not self.cfg.service.vllm_url:
            self.vllm_server = VllmServer(self.cfg)
            self.vllm_server.start(say)
        client = VllmClient(vllm_url(self.cfg))
        client.base_model()  # raises VllmUnreachable naming the address
        self.vllm = VllmAdapters(self.cfg, client)
        say(f"completions decode on vLLM at {client.url} (sisa routes each prompt to its top shard)")

    def current_version(self, store: Store | None = None) -> versions.ModelVersion:
        v = versions.current(store or open_store(self.cfg))
        if v is None:
            raise HTTPException(503, "no model version serves yet: run `sisa train` first")
        return v

    def current_batcher(self) -> tuple[versions.ModelVersion, serving.Ensemble, Decoder]:
        store = open_store(self.cfg)
        v = self.current_version(store)
        with self._lock:
            if self.closed:
                raise HTTPException(503, "the server is shutting down")
            if self._loaded is None or self._loaded[0] != v.model_version:
                ens = serving.load_ensemble(store, self.cfg, v.shards)
                decoder = self._decoder(store, v, ens)
                if self._loaded is not None:
                    self._loaded[2].close(timeout_s=0, cancel=False)  # ends what it began
                self._loaded = (v.model_version, ens, decoder)
            return v, self._loaded[1], self._loaded[2]

    def _decoder(self, store: Store, v: versions.ModelVersion, ens: serving.Ensemble) -> Decoder:
        if self.vllm is None:
            return Batcher(ens, self.cfg.service.max_batch)
        route_id = next(self._routes)
        try:
            self.vllm.hold(store, route_id, v.shards)
            return VllmRoute(
                ens, self.vllm.client, v.shards, self.cfg.service.max_batch, lambda: self.vllm.release(route_id)
            )
        except SisaError as e:
            raise HTTPException(503, e.message) from None

    def close(self, timeout_s: float) -> bool:
        """Stop serving: running requests get `timeout_s`, then are cancelled; a vLLM server
        sisa started stops."""
        with self._lock:
            self.closed = True
            loaded, self._loaded = self._loaded, None
        ended = True
        if loaded is not None:
            decoder = loaded[2]
            decoder.close(timeout_s=timeout_s, cancel=False)
            ended = decoder.close(timeout_s=5.0)
        if self.vllm is not None:
            self.vllm.client.close()
        if self.vllm_server is not None:
            self.vllm_server.stop()
        return ended
