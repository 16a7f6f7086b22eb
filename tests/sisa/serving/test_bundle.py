"""A serving version as a folder (sisa/serving/bundle.py): written from a store by `sisa export --format
ensemble`, loaded without it, verified by sha256, generating what the store's version generates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from sisa.storage.errors import ConfigError, IntegrityError, NotFoundError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.lineage import versions
from sisa.serving import bundle
from sisa.serving import engine as serving
from tests.helpers import cli_args, run_cli, train_store

pytestmark = pytest.mark.slow
PROMPTS = ["Ada Lane works as a", "Bo lives in"]
ROWS = make_people(10, seed=5)
TRAINING = ("training.epochs=2",)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A bundle of a trained tiny store (the store stays; tests copy the bundle to damage it)."""
    root = tmp_path_factory.mktemp("bundle")
    train_store(root, ROWS, *TRAINING)
    code, _, err = run_cli("export", "--format", "ensemble", "--out", str(root / "b"), *cli_args(root / "s"))
    assert code == 0, err
    return root / "b"


def test_export_delete_the_store_load_and_generate_the_same_text(tmp_path, make_trained_store):
    cfg = make_trained_store(ROWS, *TRAINING, "serving.prior=records", "serving.top_shards=1").cfg
    store = Store.open(cfg.store.uri)
    v, ens = serving.load_serving(store, cfg)
    served = [serving.generate_text(ens, p, 10) for p in PROMPTS]
    counts = serving.live_record_counts(store)
    code, out, err = run_cli(
        "export",
        "--format",
        "ensemble",
        "--out",
        str(tmp_path / "b"),
        "--json",
        *cli_args(tmp_path / "s", "serving.prior=records", "serving.top_shards=1"),
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["format"] == "ensemble" and res["model_version"] == v.model_version
    assert res["shards"] == {str(k): c for k, c in sorted(v.shards.items())}

    shutil.rmtree(tmp_path / "s")  # the store is gone; the folder is all there is
    manifest, loaded = bundle.load_bundle(tmp_path / "b")
    assert [serving.generate_text(loaded, p, 10) for p in PROMPTS] == served
    assert bundle.generate_texts(loaded, PROMPTS, 10) == served
    assert (loaded.aggregation, loaded.top_shards) == ("posterior", 1)
    assert torch.allclose(loaded.log_prior(), ens.log_prior())
    assert manifest["serving"] == {
        "aggregation": "posterior",
        "prior": "records",
        "record_counts": {str(k): n for k, n in sorted(counts.items())},
        "top_shards": 1,
    }
    # The CLI serves the folder too, with no store at all.
    code, out, err = run_cli(
        "generate",
        "--bundle",
        str(tmp_path / "b"),
        "--prompt",
        PROMPTS[0],
        "--max-new-tokens",
        "10",
        "--json",
        "store.uri=" + str(tmp_path / "none"),
    )
    assert code == 0, err
    assert json.loads(out)["completion"] == served[0]
    assert not (tmp_path / "none").exists()


def test_a_bundle_holds_adapters_and_settings_only(exported):
    manifest = bundle.read_manifest(exported)
    files = sorted(str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file())
    assert files == [
        "shard0/adapter_config.json",
        "shard0/adapter_model.safetensors",
        "shard1/adapter_config.json",
        "shard1/adapter_model.safetensors",
        bundle.MANIFEST,
    ]
    assert manifest["format"] == bundle.FORMAT and manifest["model"]["name"] == "tiny"
    assert manifest["serving"] == {
        "aggregation": "posterior",
        "prior": "uniform",
        "record_counts": None,
        "top_shards": 2,
    }
    assert Path(manifest["model"]["cache_dir"]).is_absolute()
    for key, shard in manifest["shards"].items():
        assert set(shard["files"]) == set(bundle.ADAPTER_FILES) and shard["checkpoint_id"].startswith(
            f"s{int(key):05d}-"
        )
    # Nothing of the records: no text, no name, no id.
    blob = b"".join((exported / f).read_bytes() for f in files).lower()
    for row in ROWS:
        for value in (row["text"], row["answer"].strip(" ."), row["record_id"], row["subject_id"]):
            assert value.lower().encode() not in blob, value


def test_damage_and_mismatch_are_refused(exported, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(exported, copy)
    bundle.load_bundle(copy)  # intact: loads
    weights = copy / "shard1" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="shard 1's adapter file adapter_model.safetensors is damaged"):
        bundle.load_bundle(copy)
    shutil.rmtree(copy / "shard1")
    with pytest.raises(IntegrityError, match="shard 1's adapter file .* is missing"):
        bundle.load_bundle(copy)

    with pytest.raises(ConfigError, match="unknown bundle override"):
        bundle.load_bundle(exported, {"lora_r": 2})
    # Another base (a folder of other weights) is refused before any adapter is loaded onto it.
    other = tmp_path / "other-base"
    from sisa.config import ModelConfig
    from sisa.model.base import load_base_model

    base, tok = load_base_model(ModelConfig(name="tiny", device="cpu"))
    base.save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(IntegrityError, match="trained on base model"):
        bundle.load_bundle(exported, {"base_model": str(other), "cache_dir": str(tmp_path / "cache")})

    manifest = json.loads((exported / bundle.MANIFEST).read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / bundle.MANIFEST).write_text(json.dumps({**manifest, "format": "something", "schema_version": 99}))
    with pytest.raises(ConfigError) as info:
        bundle.load_bundle(bad)
    assert "`format` should be 'sisa-ensemble'" in str(info.value) and "schema_version" in str(info.value)
    with pytest.raises(NotFoundError, match="not a sisa bundle"):
        bundle.load_bundle(tmp_path / "nothing-here")


def test_export_refuses_a_non_empty_folder_and_leaves_no_temp(exported, tmp_path):
    store_args = cli_args(exported.parent / "s")
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    code, _, err = run_cli("export", "--format", "ensemble", "--out", str(target), *store_args)
    assert code == 4 and "not empty" in err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("export", "--format", "ensemble", "--out", str(empty), *store_args)[0] == 0
    assert (empty / bundle.MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]  # no temp sibling left
    v = versions.current(Store.open(str(exported.parent / "s")))
    assert bundle.read_manifest(empty)["model_version"] == v.model_version
