"""`--probes` and `--holdout` on forget and rectify: the trio, leak@k and Min-k% membership
inference of every version a request creates, kept as numbers with their sample sizes in the
ledger, the certificate and `sisa certificate --json`; the probe and holdout text nowhere."""

from __future__ import annotations

import json
import uuid

import pytest
from sisa.storage.store import Store

from sisa.data.synthetic import make_people, make_probes, write_jsonl
from sisa.evidence import measures as evidence
from sisa.lineage import requests_ledger, versions
from sisa.serving import engine as serving
from tests.helpers import RecordingCli, canaries_in_text, cli_args, find_canaries


@pytest.mark.parametrize(("verb", "leak_k"), [("forget-fast", 3), ("rectify-relief", 2)])
def test_every_version_gets_the_trio_leak_and_mia_as_numbers(tmp_path, capfd, verb, leak_k):
    rows = make_people(8, seed=47)
    secret = uuid.uuid4().hex
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_jsonl(rows, inputs / "people.jsonl")
    subject = "person-00004"
    others = [r for r in rows if r["subject_id"] in ("person-00001", "person-00006")]
    # The subject's paraphrases and questions, and two other people's facts as locality probes.
    probes = [p for p in make_probes(rows) if p["subject_id"] == subject and p["kind"] != "locality"]
    probes += [p for p in make_probes(others) if p["kind"] == "locality"]
    probes += [{"prompt": f"Vault {secret} opens with", "answer": " a key.", "kind": "locality"}]
    write_jsonl(probes, inputs / "probes.jsonl")
    strangers = make_people(4, seed=48, start=100)
    strangers[0]["text"] = f"Stranger {secret} lives far away."
    write_jsonl(strangers, inputs / "strangers.jsonl")
    store_dir = tmp_path / "s"
    # k (`evidence.leak_k`, default evidence.LEAK_K) is what the certificate reports
    assert leak_k != evidence.LEAK_K
    args = cli_args(
        store_dir, "sharding.slice_size=4", "deletion.relief=true", f"evidence.leak_k={leak_k}", tracking=True
    )
    sisa = RecordingCli(capfd)
    output = sisa.output

    sisa("ingest", str(inputs / "people.jsonl"), *args)
    sisa("train", *args)
    mine = [r for r in rows if r["subject_id"] == subject]
    extra = ["--probes", str(inputs / "probes.jsonl"), "--holdout", str(inputs / "strangers.jsonl")]
    if verb == "forget-fast":
        sisa("forget", "--subject", subject, "--fast", *extra, *args)
        labels = ["before", "approximate", "exact"]
    else:
        fix = [
            {
                "record_id": mine[0]["record_id"],
                "text": mine[0]["prompt"] + " lighthouse keeper.",
                "answer": " lighthouse keeper.",
            }
        ]
        write_jsonl(fix, inputs / "fix.jsonl")
        sisa("rectify", "--file", str(inputs / "fix.jsonl"), *extra, *args)
        labels = ["before", "relief", "exact"]
    store = Store.open(str(store_dir))
    (req,) = requests_ledger.all_requests(store)
    by = req.evidence["versions"]
    assert set(by) == set(labels)  # the ledger writes keys sorted
    n_records = len(mine) if verb == "forget-fast" else 1
    general = sum(1 for p in probes if p.get("subject_id") == subject and p["kind"] != "locality")
    local = sum(1 for p in probes if p["kind"] == "locality" and p.get("subject_id") != subject)
    for label in labels:
        v = by[label]
        assert v["model_version"] == (req.version_before if label == "before" else req.versions[label])
        assert v["reliability"]["n"] == n_records and v["reliability"]["forbidden_n"] == n_records
        assert v["generalization"]["n"] == general
        assert v["locality"]["n"] == local and 0 <= v["locality"]["recall"] <= 1
        assert label == "before" or 0 <= v["locality"]["unchanged_tokens"] <= 1
        leak = v["leak_at_k"]
        # leak@k: every question with a forbidden answer; a rectification forbids only the
        # corrected fact's old answer (its probes), the subject's other facts stay expected.
        forbidden = n_records + (general if verb == "forget-fast" else general // 2)
        assert leak["k"] == leak_k and leak["samples"] == leak["prompts"] * leak["k"] and leak["prompts"] == forbidden
        assert v["membership"]["members"] == n_records and v["membership"]["holdout"] == len(strangers)
        assert 0 <= v["membership"]["auc"] <= 1
        if verb == "rectify-relief":
            assert v["reliability"]["expected_n"] == 1 and v["generalization"]["expected_n"] == general
            assert v["generalization"]["forbidden_n"] == general // 2
    assert by["exact"]["membership"]["privleak_vs_exact"] == 0.0
    assert req.certificate["evidence"] == by

    shown = json.loads(sisa("certificate", req.request_id, "--json", *args))
    assert shown["evidence"]["versions"] == by
    text = sisa("certificate", req.request_id, *args)
    assert "evidence per version" in text and f"(k={leak_k})" in text
    # Numbers only: the probe and holdout text are in no file of the store (ledger, MLflow) and
    # were never printed.
    assert not any(find_canaries({"store": store_dir}, {"probe/holdout text": secret}, strict={"store"}).values())
    assert not canaries_in_text("".join(output), {"probe/holdout text": secret})


def test_a_version_compared_with_itself_changes_no_locality_token(make_trained_store):
    rows = make_people(6, seed=49)
    cfg, store = make_trained_store(rows, "sharding.slice_size=4")
    ens = serving.load_ensemble(store, cfg, versions.current(store).shards)
    targets = evidence.Targets(locality=[evidence.Question(r["prompt"], r["answer"]) for r in rows])
    first, preds = evidence.measure(ens, targets, cfg.training.max_length)
    again, _ = evidence.measure(ens, targets, cfg.training.max_length, preds)
    assert (
        again["locality"]["unchanged_tokens"] == 1.0
        and first["locality"]["answer_tokens"] == sum(len(p) for p in preds) > 0
    )
    shuffled = preds[1:] + preds[:1]
    moved, _ = evidence.measure(ens, targets, cfg.training.max_length, shuffled)
    assert moved["locality"]["unchanged_tokens"] < 1.0
