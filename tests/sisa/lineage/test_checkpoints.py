"""Checkpoints (sisa/lineage/checkpoints.py): content-addressed ids, files staged in the store's
tmp/ and moved into place by one rename, every file's sha256 checked on load, the lineage and the
parent chain read back.

Checkpoints are written here as the trainer writes them (`write_checkpoint` with a real AdamW
state and a safetensors adapter) into a real store, without training: what is under test is the
checkpoint, not the optimisation."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from sisa.storage import layout
from sisa.storage.errors import IntegrityError, NotFoundError
from sisa.storage.store import Store

from sisa.lineage import checkpoints

TRAINING_FP, BASE_FP = "f" * 64, "b" * 64


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.create(str(tmp_path / "s"), num_shards=2, seed=0)


def _optimizer(seed: int) -> torch.optim.AdamW:
    """An AdamW with state (one step taken), as a slice's training leaves it."""
    torch.manual_seed(seed)
    param = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.randn(3, 2)
    opt.step()
    return opt


def _write(
    store: Store,
    shard: int,
    sl: int,
    parent: str | None,
    record_ids: list[str],
    contents: list[str] | None = None,
    seen: list | None = None,
) -> str:
    """A checkpoint of (shard, slice) after `parent` that trained `record_ids`; its id is built as
    the trainer builds it. `seen`, a list, gets the staging folder the adapter was written to."""
    hashes = store.hash_ids(record_ids)
    content = None if contents is None else checkpoints.content_hashes(store, record_ids, contents)
    parent_digest = None if parent is None else checkpoints.read_manifest(store, shard, parent)["lineage_digest"]
    digest = checkpoints.lineage_digest(parent_digest, hashes + (content or []))
    cid = checkpoints.make_checkpoint_id(shard, sl, parent, digest, TRAINING_FP, BASE_FP)
    final = store.fs.full(layout.checkpoint_dir(shard, cid))

    def save_adapter(folder: str) -> None:
        if seen is not None:
            seen.append((folder, os.path.exists(final)))
        tensors = {"lora_A": torch.full((2, 2), float(sl)), "lora_B": torch.arange(4.0).reshape(2, 2)}
        save_file(tensors, os.path.join(folder, checkpoints.ADAPTER_WEIGHTS))

    manifest = {"shard_id": shard, "slice_idx": sl, "parent_checkpoint_id": parent, "lineage_digest": digest}
    checkpoints.write_checkpoint(store, cid, manifest, save_adapter, _optimizer(sl), hashes, content)
    return cid


def test_the_id_is_a_content_address_with_shard_and_slice_readable():
    args = (1, 3, "s00001-l000002-0123456789abcdef", "d" * 64, TRAINING_FP, BASE_FP)
    cid = checkpoints.make_checkpoint_id(*args)
    assert cid == checkpoints.make_checkpoint_id(*args)
    assert cid.startswith("s00001-l000003-") and len(cid.split("-")[2]) == 16
    assert (checkpoints.shard_of(cid), checkpoints.slice_of(cid)) == (1, 3)
    # Every input is part of the address.
    for i, other in enumerate([2, 4, None, "e" * 64, "0" * 64, "1" * 64]):
        changed = list(args)
        changed[i] = other
        assert checkpoints.make_checkpoint_id(*changed) != cid, f"argument {i} is not in the id"
    approx = checkpoints.make_approximate_id(cid)
    assert checkpoints.is_approximate(approx) and not checkpoints.is_approximate(cid)
    assert (checkpoints.shard_of(approx), checkpoints.slice_of(approx)) == (1, 3)
    assert approx != checkpoints.make_approximate_id(cid)  # not a content address: never reused


def test_the_lineage_digest_covers_the_parent_and_this_slices_records_in_any_order():
    a = checkpoints.lineage_digest(None, ["h1", "h2"])
    assert a == checkpoints.lineage_digest(None, ["h2", "h1"])
    assert a != checkpoints.lineage_digest(None, ["h1"])
    assert checkpoints.lineage_digest(a, ["h3"]) != checkpoints.lineage_digest(None, ["h3"])


def test_content_hashes_are_keyed_by_the_store_and_tell_old_text_from_new(store, tmp_path):
    old = checkpoints.content_hashes(store, ["r1"], ["a" * 64])
    assert old == checkpoints.content_hashes(store, ["r1"], ["a" * 64])
    assert old != checkpoints.content_hashes(store, ["r1"], ["c" * 64])  # the same record rectified
    other = Store.create(str(tmp_path / "other"), num_shards=2, seed=0)
    assert old != checkpoints.content_hashes(other, ["r1"], ["a" * 64])  # each store its own key
    assert "r1" not in old[0]


def test_a_checkpoint_is_staged_in_the_store_tmp_and_renamed_into_place(store):
    seen: list[tuple[str, bool]] = []
    cid = _write(store, 0, 0, None, ["r1", "r2"], seen=seen)
    ((staging, final_existed),) = seen
    assert Path(staging).parent == Path(store.fs.full(layout.TMP))
    assert Path(staging).name.startswith("sisa-ckpt-")
    assert not final_existed, "the checkpoint folder existed before its files were complete"
    assert not os.path.exists(staging), "the staging folder was left behind"
    folder = Path(store.fs.full(layout.checkpoint_dir(0, cid)))
    names = [checkpoints.ADAPTER_WEIGHTS, checkpoints.OPTIMIZER_STATE, checkpoints.OPTIMIZER_META, checkpoints.LINEAGE]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, checkpoints.MANIFEST])
    assert checkpoints.checkpoint_ids(store, 0) == [cid] and checkpoints.checkpoint_ids(store, 1) == []
    # The same content address again is a no-op: nothing staged, the manifest as it was.
    before = (folder / checkpoints.MANIFEST).read_bytes()
    again: list = []
    assert _write(store, 0, 0, None, ["r2", "r1"], seen=again) == cid
    assert again == [] and (folder / checkpoints.MANIFEST).read_bytes() == before


def test_the_manifest_lists_the_sha256_of_every_file_and_the_tensors_read_back(store):
    cid = _write(store, 1, 0, None, ["r1"])
    with checkpoints.open_checkpoint(store, cid) as ckpt:
        manifest = ckpt.manifest
        for name, sha in manifest["files"].items():
            assert hashlib.sha256((Path(ckpt.path) / name).read_bytes()).hexdigest() == sha, name
        assert checkpoints.MANIFEST not in manifest["files"]
        assert manifest["checkpoint_id"] == cid and manifest["format_version"] == checkpoints.FORMAT_VERSION
        assert set(manifest["library_versions"]) == {"sisa", "torch", "transformers", "peft", "safetensors"}
        adapter = checkpoints.load_adapter_tensors(ckpt)
        assert torch.equal(adapter["lora_B"], torch.arange(4.0).reshape(2, 2))
        tensors, meta = checkpoints.load_optimizer_state(ckpt)
    assert checkpoints.adapter_sha256(store, cid) == manifest["files"][checkpoints.ADAPTER_WEIGHTS]
    # The optimizer state goes back into an optimizer exactly (safetensors + JSON, no pickle).
    want = _optimizer(0)
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3, 2))], lr=1e-3)
    checkpoints.tensors_to_optimizer(fresh, tensors, meta)
    got, ref = fresh.state_dict()["state"][0], want.state_dict()["state"][0]
    assert set(got) == set(ref) and all(torch.equal(torch.as_tensor(got[k]), torch.as_tensor(ref[k])) for k in ref)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "remove", "add a file", "manifest"])
def test_a_tampered_checkpoint_is_refused_on_load(store, damage):
    cid = _write(store, 0, 0, None, ["r1"])
    folder = Path(store.fs.full(layout.checkpoint_dir(0, cid)))
    weights = folder / checkpoints.ADAPTER_WEIGHTS
    if damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01
        weights.write_bytes(bytes(data))
        expected = f"{checkpoints.ADAPTER_WEIGHTS} is damaged"
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-8])
        expected = f"{checkpoints.ADAPTER_WEIGHTS} is damaged"
    elif damage == "remove":
        (folder / checkpoints.OPTIMIZER_STATE).unlink()
        expected = f"{checkpoints.OPTIMIZER_STATE} is missing"
    elif damage == "add a file":
        (folder / "rng.pickle").write_bytes(b"anything")
        expected = "rng.pickle"
    else:
        (folder / checkpoints.MANIFEST).write_text("{not json")
        expected = "not valid JSON"
    with pytest.raises(IntegrityError, match=expected) as e:
        checkpoints.open_checkpoint(store, cid)
    assert cid in str(e.value)
    if damage != "manifest":  # the check is what refused: unverified, the folder opens
        checkpoints.open_checkpoint(store, cid, verify=False).close()


def test_lineage_and_the_parent_chain_read_back(store):
    first = _write(store, 0, 0, None, ["r1", "r2"], contents=["a" * 64, "b" * 64])
    second = _write(store, 0, 1, first, ["r3"], contents=["c" * 64])
    legacy = _write(store, 1, 0, None, ["r4"])  # written before lineage recorded content
    ids = store.hash_ids(["r1", "r2", "r3", "r4"])
    content = checkpoints.content_hashes(store, ["r1", "r2", "r3"], ["a" * 64, "b" * 64, "c" * 64])
    lineage = pq.read_table(store.fs.full(f"{layout.checkpoint_dir(0, first)}/{checkpoints.LINEAGE}"))
    assert lineage["record_hash"].to_pylist() == sorted(ids[:2])  # sorted, keyed: no record id on disk
    assert not {"r1", "r2"} & set(lineage["record_hash"].to_pylist())
    assert sorted(checkpoints.own_lineage(store, first)) == sorted(ids[:2] + content[:2])
    assert checkpoints.full_lineage(store, second) == set(ids[:3] + content)
    assert list(checkpoints.chain(store, second)) == [second, first]
    assert checkpoints.parent_of(store, second) == first and checkpoints.parent_of(store, first) is None
    assert checkpoints.ancestor_before(store, second, 1) == first
    assert checkpoints.ancestor_before(store, second, 0) is None
    assert checkpoints.parents(store) == {first: None, second: first, legacy: None}
    assert checkpoints.shard_slices(store, 0) == [0, 1] and checkpoints.sealed_slices(store) == {0: 1, 1: 0}
    assert checkpoints.checkpoints_holding(store, {content[2]}) == {second}
    assert checkpoints.checkpoints_holding(store, {ids[3]}) == {legacy}
    assert checkpoints.legacy_holding(store, set(ids)) == {legacy}
    manifest = json.loads(Path(store.fs.full(f"{layout.checkpoint_dir(0, second)}/{checkpoints.MANIFEST}")).read_text())
    parent_digest = checkpoints.read_manifest(store, 0, first)["lineage_digest"]
    assert manifest["lineage_digest"] == checkpoints.lineage_digest(parent_digest, ids[2:3] + content[2:])


def test_a_purged_ancestor_breaks_the_chain_loudly(store):
    first = _write(store, 0, 0, None, ["r1"])
    second = _write(store, 0, 1, first, ["r2"])
    store.fs.delete(layout.checkpoint_dir(0, first))
    with pytest.raises(NotFoundError, match=first):
        list(checkpoints.chain(store, second))
    with pytest.raises(NotFoundError, match=first):
        checkpoints.open_checkpoint(store, first)
    with pytest.raises(NotFoundError, match=first):
        checkpoints.own_lineage(store, first)
    assert checkpoints.checkpoints_holding(store, set(store.hash_ids(["r1", "r2"]))) == {second}
