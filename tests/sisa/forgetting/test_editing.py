"""The fast edit bridge of `rectify --fast` (sisa/forgetting/editing.py), tiny model, real parts:
the bridge serves before the exact retrain, marked approximate; its checkpoint starts from the
relief checkpoint (a fresh adapter when slice 0 is hit), has learned the new text, and its
lineage holds the corrected record and its new content, never the old; the old text is nowhere
but the data while it serves; the exact version supersedes it and the purge deletes it; `sisa
verify --replay` holds."""

from __future__ import annotations

import pytest
from sisa.storage import layout
from sisa.storage.store import Store

from sisa.data import normalise, read_source
from sisa.data.synthetic import make_people, write_jsonl
from sisa.forgetting import runner
from sisa.lineage import checkpoints, versions
from sisa.lineage.requests_ledger import RequestMode
from sisa.serving import engine
from tests.helpers import cli_args, find_canaries, run_cli, train_store

PROMPT = "Zed Quill's vault code is"


def _rows(old_secret: str, first: bool) -> list[dict]:
    rows = make_people(10, seed=43)
    record = {
        "record_id": "rec-vault",
        "subject_id": "subject-vault",
        "text": f"{PROMPT} OLD-{old_secret}.",
        "prompt": PROMPT,
        "answer": f" OLD-{old_secret}.",
    }
    # First: the record opens its shard's slice 0 (the bridge starts from a fresh adapter);
    # last: it sits in a later slice (the bridge starts from the relief checkpoint).
    return [record, *rows] if first else [*rows, record]


@pytest.mark.parametrize("first", [False, True], ids=["later-slice", "slice-0"])
def test_rectify_fast_serves_the_new_text_approximately_until_the_exact_version(tmp_path, first):
    # Fixed (each test trains its own store): the losses below are then the same every run.
    old_secret, new_secret = "7f3a91c2e4", "b85d02e6f1"
    extra = ("sharding.slice_size=4", "training.epochs=2", "unlearning.edit_steps=12", "unlearning.edit_lr=0.05")
    cfg, store = train_store(tmp_path, _rows(old_secret, first), *extra)
    (before,) = store.index.lookup(["rec-vault"])[0].to_pylist()
    assert (before["slice_idx"] == 0) == first
    old_hash = checkpoints.content_hashes(store, ["rec-vault"], [before["content_sha256"]])[0]
    served = versions.current(store).shards[before["shard_id"]]
    relief_ckpt = checkpoints.ancestor_before(store, served, before["slice_idx"])
    # Positive control: the version before trained on the old text, and the scan finds it.
    assert old_hash in checkpoints.full_lineage(store, served)
    assert find_canaries({"store": tmp_path / "s"}, {"old": old_secret})["old"]

    new_text = f"{PROMPT} NEW-{new_secret}."
    fix = tmp_path / "fix.jsonl"
    write_jsonl([{"record_id": "rec-vault", "text": new_text, "prompt": PROMPT, "answer": f" NEW-{new_secret}."}], fix)
    table, problems = normalise(read_source(str(fix)), cfg)
    seen: list[tuple[str, dict]] = []

    def on_version(kind: str, entry) -> None:
        s = Store.open(cfg.store.uri)
        info = {"version": entry.model_version, "approximate": entry.approximate, "shards": dict(entry.shards)}
        if kind == "approximate":
            cid = entry.shards[before["shard_id"]]
            info["cid"] = cid
            info["parent"] = checkpoints.parent_of(s, cid)
            info["lineage"] = checkpoints.full_lineage(s, cid)
            info["own"] = set(checkpoints.own_lineage(s, cid))
            info["serving"] = s.current_version()
            # The new answer's loss under the bridge's shard against its start (no adapter: the base).
            shard = before["shard_id"]
            start = {shard: info["parent"]} if info["parent"] is not None else {}
            bridge_loss = engine.measure_records(s, cfg, {shard: cid}, [new_text], [PROMPT])["ensemble"]
            start_loss = engine.measure_records(s, cfg, start, [new_text], [PROMPT])["ensemble"]
            info["loss_bridge"], info["loss_start"] = bridge_loss, start_loss
            # The old text is nowhere but the data (slice files) while the bridge serves.
            outside = [p for p in (tmp_path / "s").rglob("*") if p.is_file() and layout.DATA not in p.parts]
            info["old_outside_data"] = find_canaries({"store": outside}, {"old": old_secret})["old"]
        seen.append((kind, info))

    with store.job("rectify", 30):
        res = runner.rectify(
            store, cfg, table, problems, runner.RequestOptions(mode=RequestMode.FAST), on_version=on_version
        )
    req = res.request
    assert [k for k, _ in seen] == ["approximate", "exact"]  # the bridge serves first, the exact version next
    bridge, exact = seen[0][1], seen[1][1]
    cid = bridge["cid"]
    assert bridge["approximate"] and not exact["approximate"] and bridge["serving"] == bridge["version"]
    assert checkpoints.is_approximate(cid) and cid.startswith(f"s{before['shard_id']:05d}-l")
    if first:  # slice 0 hit: a fresh adapter on the base
        assert bridge["parent"] is None and checkpoints.slice_of(cid) == 0
    else:  # the relief checkpoint: its last checkpoint before the record's slice
        assert bridge["parent"] == relief_ckpt is not None
    (after,) = Store.open(cfg.store.uri).index.lookup(["rec-vault"])[0].to_pylist()
    new_hash = checkpoints.content_hashes(store, ["rec-vault"], [after["content_sha256"]])[0]
    assert req.rectified == [{"old": old_hash, "new": new_hash}]
    # Its lineage holds the corrected record (so a later deletion of it purges the bridge) and its
    # new content, never the old; it learned the new text (tiny model: the loss, not recall).
    assert {new_hash, store.hash_id("rec-vault")} <= bridge["own"] and old_hash not in bridge["lineage"]
    assert bridge["loss_bridge"] < bridge["loss_start"] - 0.15, (bridge["loss_bridge"], bridge["loss_start"])
    assert not bridge["old_outside_data"], bridge["old_outside_data"]
    unaffected = {k: v for k, v in bridge["shards"].items() if k != before["shard_id"]}
    assert unaffected == {k: v for k, v in versions.read(store, 1).shards.items() if k != before["shard_id"]}

    # The exact version supersedes it: the bridge checkpoint and its version are purged.
    store = Store.open(cfg.store.uri)
    assert req.status.value == "completed" and store.current_version() == req.versions["exact"]
    assert req.versions["approximate"] == bridge["version"] and cid in req.purge["checkpoints"]
    assert cid not in checkpoints.checkpoint_ids(store, before["shard_id"])
    assert versions.read(store, bridge["version"]).status == versions.PURGED
    assert req.certificate["lineage_check"]["passed"] and req.certificate["purge_check"]["passed"]
    code, out, err = run_cli("verify", "--replay", *cli_args(tmp_path / "s", *extra))
    assert code == 0 and "verified" in out + err, err
    assert not find_canaries({"store": tmp_path / "s"}, {"old": old_secret})["old"]
    assert find_canaries({"store": tmp_path / "s"}, {"new": new_secret})["new"]  # the scan can find text


def test_the_edit_keys_are_validated(tmp_path):
    from sisa.storage.errors import ConfigError

    from sisa.config import load_config
    from tests.helpers import TINY

    assert load_config(TINY, ["unlearning.edit_steps=3"]).unlearning.edit_steps == 3
    for bad in ("unlearning.edit_steps=0", "unlearning.edit_lr=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].split(".")[1]):
            load_config(TINY, [bad])


def test_a_policy_rule_with_the_fast_method_bridges_an_approved_correction_batch_exactly(tmp_path):
    """The policy's `fast` method for corrections serves the edit bridge once approved; the batch
    (`sisa approve`: of this request alone) traces the retrain from under the bridge (here slice 0:
    from scratch) and purges the bridge."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n"
        "  - name: corrections-bridge\n    when: {kind: rectify}\n    method: fast\n    approvers: 1\n"
        "  - name: default\n    method: requested\n"
    )
    extra = ("sharding.slice_size=4", "training.epochs=1", "unlearning.edit_steps=2", f"deletion.policy={policy}")
    cfg, store = train_store(tmp_path, _rows("5c1e0d9a77", first=True), *extra)
    fix = tmp_path / "fix.jsonl"
    write_jsonl([{"record_id": "rec-vault", "text": f"{PROMPT} NEW-0a4b6c8d2e."}], fix)
    table, problems = normalise(read_source(str(fix)), cfg)
    with store.job("rectify", 30):
        req = runner.rectify(store, cfg, table, problems, runner.RequestOptions(filer=runner.Filer("alice"))).request
    assert req.status.value == "awaiting_approval" and req.decision.rule == "corrections-bridge"
    assert req.mode == RequestMode.FAST and store.current_version() == 1  # nothing served before approval
    with store.job("approve", 30):
        req = runner.approve(store, cfg, req.request_id, "bob", at_once=True)
    store = Store.open(cfg.store.uri)
    bridge = versions.read(store, req.versions["approximate"])
    (cid,) = [c for c in bridge.shards.values() if checkpoints.is_approximate(c)]
    assert bridge.approximate and cid in req.purge["checkpoints"] and bridge.status == versions.PURGED
    assert req.status.value == "completed" and store.current_version() == req.versions["exact"]
    assert not any(checkpoints.is_approximate(c) for c in versions.current(store).shards.values())
    assert req.certificate["lineage_check"]["passed"] and req.certificate["purge_check"]["passed"]
    code, out, err = run_cli("verify", "--replay", *cli_args(tmp_path / "s", *extra))
    assert code == 0 and "verified" in out + err, err
