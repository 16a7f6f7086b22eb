"""Which of sisa's LoRA adapters a vLLM server holds, and for how long.

An adapter is registered in vLLM under its checkpoint id, which names its content (a
retrained shard is a new checkpoint, so a new name): vLLM's prefix cache keys KV blocks by the
adapter's name, and a reused name could serve blocks computed by an adapter that is gone (vLLM
issues #30931, #42125). Before vLLM reads an adapter, sisa verifies its files' sha256, as for its
own engine; vLLM then reads it from the store's checkpoint folder, or from a copy under
`service.vllm_adapter_dir` when vLLM cannot see the store.

`sisa serve` loads a version's adapters when that version starts serving and unloads those no
serving version needs once the requests that used them are done. The purge of a deletion
(sisa/forgetting/purge.py) unloads every purged adapter and deletes its copy; when the vLLM
server cannot be reached, that fails closed: the purge is not complete and the request stays
open until it can be.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from pathlib import Path

from sisa.config import SisaConfig
from sisa.lineage import checkpoints
from sisa.serving.vllm_client import VllmClient, VllmUnreachable
from sisa.serving.vllm_server import vllm_url
from sisa.storage.errors import ConfigError, SisaError
from sisa.storage.store import Store

_CHECKPOINT_ID = re.compile(r"^s\d+-l\d+-(approx)?[0-9a-f]+$")  # what sisa registers; other adapters are not sisa's


def is_sisa_adapter(name: str) -> bool:
    return bool(_CHECKPOINT_ID.match(name))


def adapter_path(store: Store, cfg: SisaConfig, checkpoint_id: str) -> str:
    """The folder vLLM reads `checkpoint_id` from, after its files' sha256 were checked."""
    with checkpoints.open_checkpoint(store, checkpoint_id) as ckpt:  # raises IntegrityError on a bad file
        if not cfg.service.vllm_adapter_dir:
            if ckpt.downloaded:
                raise ConfigError(
                    [
                        "serving.engine: vllm on an object store needs service.vllm_adapter_dir: a folder the vLLM "
                        "server reads adapters from"
                    ]
                )
            return ckpt.path
        dest = Path(cfg.service.vllm_adapter_dir) / checkpoint_id
        if not dest.is_dir():
            tmp = dest.with_name(f".{checkpoint_id}.tmp-{uuid.uuid4().hex[:8]}")
            shutil.copytree(ckpt.path, tmp)
            try:
                os.rename(tmp, dest)
            except OSError:  # another process staged it first
                shutil.rmtree(tmp, ignore_errors=True)
        return str(dest)


def remove_copies(cfg: SisaConfig, checkpoint_ids: set[str]) -> None:
    if cfg.service.vllm_adapter_dir:
        for cid in checkpoint_ids:
            shutil.rmtree(Path(cfg.service.vllm_adapter_dir) / cid, ignore_errors=True)


class VllmAdapters:
    """The adapters `sisa serve` keeps loaded in one vLLM server: each route (one per version
    that served) holds its checkpoint ids until it has finished its requests."""

    def __init__(self, cfg: SisaConfig, client: VllmClient):
        self.cfg, self.client = cfg, client
        self._lock = threading.Lock()
        self._held: dict[int, set[str]] = {}  # route id → the checkpoint ids it decodes with

    def hold(self, store: Store, route_id: int, shards: dict[int, str]) -> None:
        """Load every adapter of `shards` that vLLM does not hold yet; the route holds them."""
        wanted = set(shards.values())
        with self._lock:
            self._held[route_id] = wanted
            try:
                for cid in sorted(wanted - self.client.adapters()):
                    self.client.load(cid, adapter_path(store, self.cfg, cid))
            except BaseException:
                del self._held[route_id]
                raise

    def release(self, route_id: int) -> list[str]:
        """The route is done: unload sisa's adapters no route still holds. Returns those unloaded."""
        with self._lock:
            self._held.pop(route_id, None)
            keep = set().union(*self._held.values()) if self._held else set()
            stale = sorted(n for n in self.client.adapters() if is_sisa_adapter(n) and n not in keep)
            for name in stale:
                self.client.unload(name)
            return stale


def unload_purged(cfg: SisaConfig, dead: set[str]) -> list[str]:
    """Unload every purged adapter from the vLLM server and delete its copies; fails closed (a
    SisaError, the purge not complete) when the server cannot be reached or keeps one."""
    if cfg.serving.engine != "vllm":
        return []
    client = VllmClient(vllm_url(cfg))
    try:
        held = client.adapters() & dead
        for name in sorted(held):
            client.unload(name)
        left = client.adapters() & dead
    except VllmUnreachable as e:
        raise SisaError(
            f"{e.message}; the purge is not complete until vLLM has unloaded every purged adapter, so the request "
            "stays open: start the vLLM server (or `sisa serve`) and run `sisa forget --resume`"
        ) from None
    finally:
        client.close()
    if left:
        raise SisaError(f"the vLLM server still holds purged adapter(s) {', '.join(sorted(left))} after unloading")
    remove_copies(cfg, dead)
    return sorted(held)
