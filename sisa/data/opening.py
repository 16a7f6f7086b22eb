"""Opening the store a config names, checked against the config."""

from __future__ import annotations

from sisa.config import SisaConfig
from sisa.lineage import signing
from sisa.storage.errors import ConfigError
from sisa.storage.store import Store


def open_store(cfg: SisaConfig, create: bool = False) -> Store:
    """Open the store at `store.uri`; with `create`, make it when missing (with its signing key)."""
    if create and not Store.exists(cfg.store.uri):
        store = Store.create(cfg.store.uri, cfg.sharding.num_shards, cfg.store.seed)
        if not cfg.deletion.signing_key:  # the key its certificates will be signed with
            signing.create_signing_key(store)
        return store
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
