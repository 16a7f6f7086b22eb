"""Loading a model version for use (sisa/serving/engine.py): the base plus each shard's verified
adapter, served with the config's settings; what it generates is what the mixture itself
generates from the same adapters (sisa/model/mixture.py), and a damaged adapter never loads.

One tiny store trained once for the module (tests/helpers.py: train_store)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from sisa.storage import layout
from sisa.storage.errors import IntegrityError, StoreError
from sisa.storage.store import Store

from sisa.config import SisaConfig
from sisa.data.synthetic import make_people
from sisa.lineage import checkpoints, versions
from sisa.model import adapters, mixture
from sisa.model.base import load_base_model
from sisa.serving import engine
from tests.helpers import make_cfg, train_store

PROMPT = "Ada Lane works as a"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_store(tmp_path_factory.mktemp("engine"), make_people(8, seed=21))


def _mixture_of(store: Store, cfg: SisaConfig) -> tuple[torch.nn.Module, object, list[str]]:
    """The serving version's adapters loaded straight from their checkpoint folders."""
    base, tokenizer = load_base_model(cfg.model)
    shards = versions.shard_checkpoints(versions.current(store))
    dirs = {f"shard{s}": checkpoints.open_checkpoint(store, cid).path for s, cid in sorted(shards.items())}
    return adapters.load_adapters(base, dirs), tokenizer, list(dirs)


def test_the_serving_version_generates_what_the_mixture_generates(trained):
    cfg, store = trained
    version, ens = engine.load_serving(store, cfg)
    assert version == versions.current(store) and version.model_version == 1
    assert ens.names == {0: "shard0", 1: "shard1"} and ens.adapter_names() == ["shard0", "shard1"]
    assert (ens.aggregation, ens.top_shards) == (cfg.serving.aggregation, cfg.serving.top_shards)
    assert ens.record_counts is None  # serving.prior: uniform
    model, tokenizer, names = _mixture_of(store, cfg)
    want = mixture.generate(
        model,
        tokenizer,
        names,
        PROMPT,
        8,
        True,
        1.0,
        0,
        aggregation=cfg.serving.aggregation,
        log_prior=mixture.log_prior(len(names)),
        top_shards=cfg.serving.top_shards,
    )
    assert engine.generate_text(ens, PROMPT, max_new_tokens=8) == want
    assert torch.equal(ens.log_prior(), mixture.log_prior(2))


def test_the_serving_settings_come_from_the_config(trained):
    cfg, store = trained
    model, tokenizer, names = _mixture_of(store, cfg)
    uniform = make_cfg(Path(store.uri), "serving.aggregation=uniform", "serving.top_shards=0")
    _, ens = engine.load_serving(store, uniform)
    want = mixture.generate(model, tokenizer, names, PROMPT, 6, aggregation="uniform", top_shards=0)
    assert ens.aggregation == "uniform" and engine.generate_text(ens, PROMPT, max_new_tokens=6) == want
    # prior: records weighs each shard by its live records in the index.
    by_records = make_cfg(Path(store.uri), "serving.prior=records")
    _, ens = engine.load_serving(store, by_records)
    counts = engine.live_record_counts(store)
    assert sum(counts.values()) == store.index.live().num_rows and set(counts) == {0, 1}
    assert ens.record_counts == counts
    assert torch.equal(ens.log_prior(), mixture.log_prior(2, [counts[0], counts[1]]))
    prior = mixture.log_prior(2, [counts[0], counts[1]])
    want = mixture.generate(
        model,
        tokenizer,
        names,
        PROMPT,
        6,
        aggregation=cfg.serving.aggregation,
        log_prior=prior,
        top_shards=cfg.serving.top_shards,
    )
    assert engine.generate_text(ens, PROMPT, max_new_tokens=6) == want


def test_a_version_of_no_shard_serves_the_base_model_alone(trained):
    cfg, store = trained
    ens = engine.load_ensemble(store, cfg, {})
    assert ens.names == {engine.BASE_SHARD: mixture.BASE} and not any(p.requires_grad for p in ens.model.parameters())
    base, tokenizer = load_base_model(cfg.model)
    want = mixture.generate(base, tokenizer, [mixture.BASE], PROMPT, 6, aggregation=cfg.serving.aggregation)
    assert engine.generate_text(ens, PROMPT, max_new_tokens=6) == want


def test_a_pool_loads_the_base_once_and_each_checkpoint_once_and_scores_as_a_fresh_load(trained):
    """The evidence's ensembles (EnsemblePool): versions that share checkpoints share their loaded
    adapters on one base; each version's ensemble scores and generates what `load_ensemble` gives."""
    cfg, store = trained
    shards = versions.shard_checkpoints(versions.current(store))
    texts = [r["text"] for r in make_people(3, seed=21)]
    pool = engine.EnsemblePool()
    one = pool.ensemble(store, cfg, {0: shards[0]})  # a version of one shard, then the whole one: adds shard 1's
    assert (pool.base_loads, pool.adapter_loads) == (1, 1)
    for _ in range(2):
        ens = pool.ensemble(store, cfg, shards)
    assert (pool.base_loads, pool.adapter_loads) == (1, len(set(shards.values())))
    assert ens.model is one.model and one.adapter_names() == [ens.names[0]]
    for mine, fresh_shards in ((ens, shards), (one, {0: shards[0]})):
        fresh = engine.load_ensemble(store, cfg, fresh_shards)
        assert engine.score_aggregations(mine, texts) == engine.score_aggregations(fresh, texts)
        assert engine.generate_text(mine, PROMPT, max_new_tokens=6) == engine.generate_text(fresh, PROMPT, 6)
    assert pool.ensemble(store, cfg, {}).names == {engine.BASE_SHARD: mixture.BASE}  # the plain base, apart
    # The versions share their scores: shard 0's rows were computed once, for the first of them.
    assert pool.scores.misses == len(texts) * len(set(shards.values())) and pool.scores.hits == len(texts)
    # A purge drops a checkpoint's adapter from memory, and every score (keyed by the run's texts);
    # a later load never reuses a dropped name.
    pool.drop([shards[0]])
    assert len(pool.scores) == 0
    assert pool.checkpoint_ids() == set(shards.values()) - {shards[0]}
    assert one.names[0] not in ens.model.peft_config
    again = pool.ensemble(store, cfg, shards)
    assert again.names[0] not in {ens.names[s] for s in shards if s != 0}
    fresh = engine.load_ensemble(store, cfg, shards)
    assert engine.score_aggregations(again, texts) == engine.score_aggregations(fresh, texts)
    pool.drop(set(shards.values()))
    assert pool.checkpoint_ids() == set() and pool.ensemble(store, cfg, shards).names.keys() == shards.keys()
    assert pool.base_loads == 2  # with no adapter left the base went too
    with pytest.raises(ValueError, match="one base model"):
        pool.ensemble(store, make_cfg(store.uri, "model.name=smollm2"), shards)


def test_a_damaged_adapter_is_refused_before_it_loads(trained, tmp_path):
    cfg, store = trained
    copy = tmp_path / "s"
    shutil.copytree(store.uri, copy)
    damaged = Store.open(str(copy))
    shard, cid = sorted(versions.current(damaged).shards.items())[0]
    weights = copy / layout.checkpoint_dir(shard, cid) / checkpoints.ADAPTER_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{cid}: file {checkpoints.ADAPTER_WEIGHTS} is damaged"):
        engine.load_serving(damaged, make_cfg(copy))


def test_no_version_yet_says_to_train_first(tmp_path):
    store = Store.create(str(tmp_path / "s"), num_shards=2, seed=0)
    with pytest.raises(StoreError, match="run `sisa train` first"):
        engine.load_serving(store, make_cfg(tmp_path / "s"))


def test_many_prompts_sampled_together_draw_what_each_draws_alone(tmp_path):
    """leak@k's samples of every question in one running batch (sample_many) are each
    question's own `sample_texts`, seed for seed."""
    from tests.helpers import random_adapters

    model, tok = random_adapters(tmp_path, ["shard0", "shard1", "shard2"])
    ens = engine.Ensemble(model, tok, {0: "shard0", 1: "shard1", 2: "shard2"}, top_shards=2)
    prompts, lengths = ["Ada Lane works as a", "Bo Li lives in", "The cat"], [5, 7, 3]
    together = engine.sample_many(ens, prompts, [0, 1, 2, 3], lengths)
    for p, n, got in zip(prompts, lengths, together, strict=True):
        assert got == engine.sample_texts(ens, p, [0, 1, 2, 3], n)


def test_torch_threads_sets_the_count_for_the_block_and_restores_it():
    import torch

    from sisa import serving

    before = torch.get_num_threads()
    with serving.torch_threads(2):
        assert torch.get_num_threads() == 2
    with serving.one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"), serving.torch_threads(0):
        pass
    assert torch.get_num_threads() == before
