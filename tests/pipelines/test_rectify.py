"""`sisa rectify` end to end: the old text of a corrected record is forgotten exactly (found
nowhere afterwards, rollback to a version that saw it refused), the new text is trained in place
(same id, subject, shard and slice), replay proves the result equals training on the corrected
data, and bad corrections are refused whole with nothing changed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sisa.pipelines.cli import main
from sisa.storage import layout
from sisa.storage.store import Store

from sisa.data.synthetic import make_people, write_jsonl
from sisa.forgetting import lineage_check
from sisa.lineage import checkpoints, requests_ledger, versions
from tests.helpers import canaries_in_text, cli_args, find_canaries, run_cli, tree_digest


def _canary_rows(old_secret: str) -> tuple[list[dict], dict]:
    rows = make_people(14, seed=43)
    prompt = "Zed Quill's vault code is"
    record = {
        "record_id": "rec-vault",
        "subject_id": "subject-vault",
        "text": f"{prompt} OLD-{old_secret}.",
        "prompt": prompt,
        "answer": f" OLD-{old_secret}.",
        "fact": "vault",
    }
    rows.insert(9, record)
    return rows, record


class _Canary:
    """A trained store (relief on, MLflow tracked) holding `rec-vault`, whose text carries a
    random old secret; `sisa(...)` runs a verb and keeps its output, to scan it for text."""

    def __init__(self, tmp_path, capfd):
        self.capfd = capfd
        self.old_secret = uuid.uuid4().hex
        self.rows, self.record = _canary_rows(self.old_secret)
        self.inputs = tmp_path / "input"
        self.inputs.mkdir()
        write_jsonl(self.rows, self.inputs / "people.jsonl")
        self.store_dir = tmp_path / "s"
        self.args = cli_args(
            self.store_dir, "sharding.slice_size=4", "training.epochs=2", "deletion.relief=true", tracking=True
        )
        self.output: list[str] = []
        capfd.readouterr()
        self.sisa("ingest", str(self.inputs / "people.jsonl"), *self.args)
        self.sisa("train", *self.args)

    def sisa(self, *argv: str, fails: bool = False) -> str:
        code, out, err = run_cli(*argv, capfd=self.capfd)
        self.output.extend([out, err])
        assert (code != 0) == fails, f"sisa {argv[0]} exited {code}: {err}"
        return out + err


def test_rectify_forgets_the_old_text_trains_the_new_and_refuses_rollback(tmp_path, capfd):
    c = _Canary(tmp_path, capfd)
    sisa, args, store_dir, inputs, output = c.sisa, c.args, c.store_dir, c.inputs, c.output
    record, old_secret, new_secret = c.record, c.old_secret, uuid.uuid4().hex
    store = Store.open(str(store_dir))
    (before,) = store.index.lookup(["rec-vault"])[0].to_pylist()
    old = {"old text": old_secret}
    # Positive controls: the lineage of version 1 holds the old content (so the guard can refuse
    # it), and the scan finds the old text (so it can fail).
    old_hash = checkpoints.content_hashes(store, ["rec-vault"], [before["content_sha256"]])[0]
    assert lineage_check.lineage_violations(store, versions.read(store, 1).shards, {old_hash})
    assert find_canaries({"store": store_dir}, old, strict={"store"})["old text"]  # the scan can fail

    prompt = record["prompt"]
    fix = inputs / "corrections.jsonl"
    write_jsonl(
        [
            {
                "record_id": "rec-vault",
                "text": f"{prompt} NEW-{new_secret}.",
                "prompt": prompt,
                "answer": f" NEW-{new_secret}.",
            }
        ],
        fix,
    )
    assert "dry run, nothing changed" in sisa("rectify", "--file", str(fix), "--dry-run", *args)
    sisa("rectify", "--file", str(fix), *args)

    # The record keeps its id, subject, shard and slice; only its content changed.
    store = Store.open(str(store_dir))
    (after,) = store.index.lookup(["rec-vault"])[0].to_pylist()
    assert {k: after[k] for k in ("subject_id", "shard_id", "slice_idx", "status")} == {
        k: before[k] for k in ("subject_id", "shard_id", "slice_idx", "status")
    }
    assert after["content_sha256"] != before["content_sha256"]
    data = store.read_slice(after["shard_id"], after["slice_idx"]).to_pylist()
    (row,) = [r for r in data if r["record_id"] == "rec-vault"]
    assert new_secret in row["text"] and new_secret in row["answer"] and row["fact"] == "vault"

    # One request of kind rectify: relief, then one exact version; the certificate names content
    # hashes (keyed), never text; the serving lineage holds the new content and not the old.
    (req,) = requests_ledger.all_requests(store)
    assert (req.kind.value, req.status.value, req.mode.value, req.records) == ("rectify", "completed", "relief", 1)
    new_hash = checkpoints.content_hashes(store, ["rec-vault"], [after["content_sha256"]])[0]
    assert req.rectified == [{"old": old_hash, "new": new_hash}] and req.id_hashes == [old_hash]
    assert req.record_hashes == [store.hash_id("rec-vault")]
    cert = req.certificate
    assert cert["kind"] == "rectify" and cert["lineage_check"]["passed"] and cert["purge_check"]["passed"]
    assert cert["rectification"]["new_content_check"]["passed"]
    assert {"relief", "exact"} <= set(req.versions) and req.versions["exact"] == store.current_version()
    serving = versions.current(store)
    held = set().union(*(checkpoints.full_lineage(store, c) for c in serving.shards.values()))
    assert new_hash in held and old_hash not in held and store.hash_id("rec-vault") in held
    assert not store.fs.exists(layout.correction_file(req.request_id))  # the staged new text went once applied

    text = sisa("certificate", req.request_id, *args)
    assert "rectification certificate" in text and old_hash[:16] in text and new_hash[:16] in text
    cert_json = json.loads(sisa("certificate", req.request_id, "--json", *args))
    assert cert_json["kind"] == "rectify"
    sisa("requests", *args)
    assert "verified" in sisa("verify", "--replay", *args)  # the serving version == training on the corrected data

    # Rollback to the version trained on the old text is refused; nothing changes.
    refused = sisa("rollback", "1", *args, fails=True)
    assert "purged" in refused
    assert store.current_version() == req.versions["exact"]

    # The old text is nowhere: store (data, index, checkpoints, ledgers), MLflow, CLI output.
    # The new text is in the data (a positive control on the same scan).
    places = {"store": store_dir}
    assert find_canaries(places, {"new text": new_secret}, strict={"store"})["new text"]
    leaks = [str(h) for h in find_canaries(places, old, strict={"store"})["old text"]]
    leaks += ["CLI output"] * bool(canaries_in_text("".join(output), old))
    leaks += ["CLI output (new text)"] * bool(canaries_in_text("".join(output), {"new": new_secret}))
    assert not leaks, f"the old text survives the rectification (or text was printed): {leaks}"


def test_bad_corrections_are_refused_whole_and_change_nothing(tmp_path, capfd):
    rows = make_people(6, seed=44)
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_jsonl(rows, inputs / "people.jsonl")
    store_dir = tmp_path / "s"
    args = cli_args(store_dir)
    assert run_cli("ingest", str(inputs / "people.jsonl"), *args)[0] == 0
    gone = rows[0]["record_id"]
    assert run_cli("forget", "--ids", gone, *args)[0] == 0
    fix = inputs / "corrections.jsonl"
    same, good = rows[2], rows[3]
    write_jsonl(
        [
            {"record_id": "no-such-record", "text": "x works as a y."},
            {"record_id": gone, "text": "a new text for a forgotten record."},
            {"record_id": same["record_id"], "text": same["text"]},
            {"record_id": good["record_id"], "text": "a perfectly fine correction."},
            {"record_id": rows[4]["record_id"], "text": "moved.", "subject_id": "someone-else"},
        ],
        fix,
    )
    state = tree_digest(store_dir)
    for queue in ([], ["--queue"]):  # queued or not, validated whole first
        code, out, err = run_cli("rectify", "--file", str(fix), *queue, *args, capfd=capfd)
        assert code != 0 and "nothing was changed" in err
        for name in ("no-such-record", gone, same["record_id"], rows[4]["record_id"]):
            assert name in err, name
        assert good["record_id"] not in err  # only the bad ones are named
        assert same["text"] not in err + out  # never the text
        assert tree_digest(store_dir) == state

    write_jsonl([{"record_id": good["record_id"], "text": "  "}], fix)
    code, _, err = run_cli("rectify", "--file", str(fix), *args, capfd=capfd)
    assert code != 0 and "empty" in err and tree_digest(store_dir) == state


def test_rectify_help_explains_the_file(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["rectify", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "record_id" in out and "--file" in out and "rollback" in out


def test_rectify_without_a_trained_model_rewrites_the_data(tmp_path):
    rows = make_people(4, seed=45)
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_jsonl(rows, inputs / "people.jsonl")
    args = cli_args(tmp_path / "s")
    assert run_cli("ingest", str(inputs / "people.jsonl"), *args)[0] == 0
    fix = inputs / "fix.csv"
    Path(fix).write_text(f"record_id,text\n{rows[1]['record_id']},corrected text\n")
    code, _, err = run_cli("rectify", "--file", str(fix), *args)
    assert code == 0, err
    store = Store.open(str(tmp_path / "s"))
    (req,) = requests_ledger.all_requests(store)
    assert req.status.value == "completed" and req.removed == 1
    found = [
        t
        for s in range(store.num_shards)
        for sl in store.record_slices(s)
        for t in store.read_slice(s, sl)["text"].to_pylist()
    ]
    assert "corrected text" in found and rows[1]["text"] not in found
    # The removed text may not come back through another rectification.
    back = inputs / "back.jsonl"
    write_jsonl([{"record_id": rows[1]["record_id"], "text": rows[1]["text"]}], back)
    state = tree_digest(tmp_path / "s")
    code, out, err = run_cli("rectify", "--file", str(back), *args)
    assert (
        code != 0
        and "earlier rectification removed" in err
        and rows[1]["record_id"] in err
        and rows[1]["text"] not in err + out
    )
    assert tree_digest(tmp_path / "s") == state


def test_a_correction_in_another_format_than_the_stored_record_is_refused(tmp_path, capfd):
    """A text correction of a record stored as chat or prompt-completion (or a chat correction of
    a text record) would change its format behind the trainer's back: refused whole, naming those
    ids, nothing changed; corrections in the stored formats go through."""
    from tests.pipelines.test_ingest_formats import chat_rows, pair_rows

    args = cli_args(tmp_path / "s")
    inputs = tmp_path / "input"
    inputs.mkdir()
    people = make_people(4, seed=46)
    write_jsonl(people, inputs / "people.jsonl")
    for path in (
        inputs / "people.jsonl",
        write_jsonl(chat_rows(3), inputs / "chats.jsonl"),
        write_jsonl(pair_rows(3), inputs / "pairs.jsonl"),
    ):
        code, _, err = run_cli("ingest", str(path), *args, capfd=capfd)
        assert code == 0, err
    code, _, err = run_cli("train", *args, capfd=capfd)
    assert code == 0, err
    chat_fix = {
        "record_id": "c-001",
        "messages": [
            {"role": "user", "content": "Where does customer 1 live?"},
            {"role": "assistant", "content": "Customer 1 lives in Oldham."},
        ],
    }
    fix = inputs / "fix.jsonl"
    write_jsonl(
        [
            {"record_id": "c-001", "text": "Customer 1 lives in Newtown."},
            {"record_id": "p-002", "text": "Customer 2 works as a baker."},
            {"record_id": people[0]["record_id"], "text": "a fine correction of a text record."},
        ],
        fix,
    )
    state = tree_digest(tmp_path / "s")
    code, out, err = run_cli("rectify", "--file", str(fix), *args, capfd=capfd)
    assert code != 0 and "nothing was changed" in err and "not in the format the record is stored in" in err
    assert "c-001" in err and "p-002" in err and people[0]["record_id"] not in err
    assert "Newtown" not in out + err and "Town1" not in out + err  # never the text, new or stored
    write_jsonl([dict(chat_fix, record_id=people[1]["record_id"])], fix)  # a conversation for a text record
    code, out, err = run_cli("rectify", "--file", str(fix), *args, capfd=capfd)
    assert code != 0 and "not in the format the record is stored in" in err and people[1]["record_id"] in err
    assert "Oldham" not in out + err
    assert tree_digest(tmp_path / "s") == state
    # In their stored formats, a text, a chat and a prompt-completion correction go through.
    for row in (
        {"record_id": people[0]["record_id"], "text": "a fine correction of a text record."},
        chat_fix,
        {"record_id": "p-002", "prompt": "Customer 2 works as a", "completion": " baker."},
    ):
        write_jsonl([row], fix)
        code, _, err = run_cli("rectify", "--file", str(fix), *args, capfd=capfd)
        assert code == 0, err
    store = Store.open(str(tmp_path / "s"))
    from sisa.forgetting import record_texts

    rows = store.index.lookup(["c-001", "p-002"])[0]
    texts, _ = record_texts.read_texts(store, rows)  # decoded in their stored formats
    chat = next(t for t in texts if getattr(t, "format", "") == "chat")
    pair = next(t for t in texts if getattr(t, "format", "") == "prompt-completion")
    assert chat.messages[-1] == ("assistant", "Customer 1 lives in Oldham.") and pair.completion == " baker."
    code, out, err = run_cli("verify", "--replay", *args, capfd=capfd)
    assert code == 0 and "verified" in out, err
    assert Store.open(str(tmp_path / "s")).current_version() == 4  # trained, then one version per correction


def test_a_queued_rectification_relieves_at_once_and_a_batch_with_a_deletion_retrains_each_shard_once(tmp_path, capfd):
    """`rectify --queue`: the new text is staged, the relief serves at once (no serving lineage
    holds the old content), no training reads the record until `sisa process`; the batch, which
    also holds a deletion in the same shard, replaces the text and retrains that shard once."""
    from sisa.storage.schemas import LIVE, RECTIFYING

    c = _Canary(tmp_path, capfd)
    sisa, args, store_dir, inputs, output = c.sisa, c.args, c.store_dir, c.inputs, c.output
    rows, record, old_secret, new_secret = c.rows, c.record, c.old_secret, uuid.uuid4().hex
    store = Store.open(str(store_dir))
    (before,) = store.index.lookup(["rec-vault"])[0].to_pylist()
    old_hash = checkpoints.content_hashes(store, ["rec-vault"], [before["content_sha256"]])[0]
    # A person in the same shard, forgotten in the same batch.
    other = next(
        r
        for r in store.index.table.to_pylist()
        if r["shard_id"] == before["shard_id"] and r["subject_id"] != "subject-vault"
    )
    gone = {r["record_id"]: r["text"] for r in rows if r["subject_id"] == other["subject_id"]}
    sisa("forget", "--subject", other["subject_id"], "--queue", "--no-evidence", *args)

    prompt = record["prompt"]
    fix = inputs / "corrections.jsonl"
    write_jsonl(
        [
            {
                "record_id": "rec-vault",
                "text": f"{prompt} NEW-{new_secret}.",
                "prompt": prompt,
                "answer": f" NEW-{new_secret}.",
            }
        ],
        fix,
    )
    assert "--probes and --holdout" in sisa(
        "rectify", "--file", str(fix), "--queue", "--probes", str(fix), *args, fails=True
    )
    out = sisa("rectify", "--file", str(fix), "--queue", *args)
    assert "queued; version" in out
    store = Store.open(str(store_dir))
    req = next(r for r in requests_ledger.all_requests(store) if r.kind.value == "rectify")
    assert (req.status.value, req.queued, req.id_hashes) == ("queued", True, [old_hash])
    # Relieved at once; the old text still in the data, held from training; the new one staged.
    relief = versions.current(store)
    assert relief.model_version == req.versions["relief"]
    assert not lineage_check.lineage_violations(store, relief.shards, {old_hash})
    (held,) = store.index.lookup(["rec-vault"])[0].to_pylist()
    assert held["status"] == RECTIFYING and held["content_sha256"] == before["content_sha256"]
    training_reads = store.read_slice(before["shard_id"], before["slice_idx"], columns=["record_id"])
    assert training_reads is None or "rec-vault" not in training_reads["record_id"].to_pylist()
    assert store.fs.exists(layout.correction_file(req.request_id))

    # While it waits: forgetting or correcting the record again is refused, naming it; nothing changes.
    state = tree_digest(store_dir)
    refused = sisa("forget", "--ids", "rec-vault", *args, fails=True)
    assert "rec-vault" in refused and "queued rectification" in refused
    assert "queued rectification" in sisa("forget", "--subject", "subject-vault", "--queue", *args, fails=True)
    write_jsonl([{"record_id": "rec-vault", "text": "yet another text."}], inputs / "again.jsonl")
    refused = sisa("rectify", "--file", str(inputs / "again.jsonl"), "--queue", *args, fails=True)
    assert "rec-vault" in refused and "queued rectification" in refused and "nothing was changed" in refused
    assert tree_digest(store_dir) == state

    res = json.loads(sisa("process", "--json", *args))
    assert res["ran"] and sorted(res["requests"]) == sorted(r.request_id for r in requests_ledger.all_requests(store))
    assert res["retrained_shards"] == [before["shard_id"]]  # once, for the deletion and the rectification
    store = Store.open(str(store_dir))
    (after,) = store.index.lookup(["rec-vault"])[0].to_pylist()
    assert after["status"] == LIVE and (after["shard_id"], after["slice_idx"]) == (
        before["shard_id"],
        before["slice_idx"],
    )
    (row,) = [
        r for r in store.read_slice(after["shard_id"], after["slice_idx"]).to_pylist() if r["record_id"] == "rec-vault"
    ]
    assert new_secret in row["text"] and new_secret in row["answer"]
    assert not set(gone) & set(store.index.table["record_id"].to_pylist())
    for r in requests_ledger.all_requests(store):
        assert r.status.value == "completed" and r.versions["exact"] == res["model_version"] == store.current_version()
        assert r.certificate["lineage_check"]["passed"] and r.certificate["purge_check"]["passed"]
    req = requests_ledger.read_request(store, req.request_id)
    assert req.certificate["rectification"]["new_content_check"]["passed"] and "loss_before" in req.evidence
    assert not store.fs.exists(layout.correction_file(req.request_id))
    assert "verified" in sisa("verify", "--replay", *args)
    assert "purged" in sisa("rollback", "1", *args, fails=True)

    places = {"store": store_dir}
    assert find_canaries(places, {"new text": new_secret}, strict={"store"})["new text"]
    found = find_canaries(places, {"old text": old_secret, **gone}, strict={"store"})
    assert not any(found.values()), f"left behind: {found}"
    assert not canaries_in_text("".join(output), {"old": old_secret, "new": new_secret, **gone})


def test_corrections_given_as_rows_take_every_format(tmp_path):
    """The service's body (corrections.from_rows) reads text, prompt-completion and chat
    corrections as a corrections file of that format is read."""
    from sisa.data.formats import FORMAT_COLUMN
    from sisa.forgetting import corrections
    from tests.helpers import make_cfg

    cfg = make_cfg(tmp_path / "s")
    chat = [
        {"record_id": "c-1", "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    ]
    pair = [{"record_id": "p-1", "prompt": "P", "completion": " C."}]
    text = [{"record_id": "t-1", "text": "T.", "prompt": "T"}]
    for rows, kind in ((chat, "chat"), (pair, "prompt-completion"), (text, "text")):
        table, problems = corrections.from_rows(rows, cfg)
        assert problems == [] and table[FORMAT_COLUMN].to_pylist() == [kind], (kind, problems)
    table, problems = corrections.from_rows(
        [{"record_id": "c-2", "messages": [{"role": "user", "content": "Q?"}]}], cfg
    )
    assert any("no assistant turn" in p for p in problems)  # validated as ingest validates chat
