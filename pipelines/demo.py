"""The whole story on one machine: train on people, remember them, forget one, prove it.

    make demo            # = sisa demo --config configs/demo.yaml
    sisa demo --config configs/tiny.yaml store.uri=/tmp/demo     # the same in seconds, tiny model

1. Make fictitious people (faker, deterministic) as conversations (the user asks about the
   person, the assistant answers), or with --format text as one-sentence facts; ingest them with
   subject_id = the person. Strangers are made the same way and never ingested.
2. Train S shards with slices (Ray).
3. Memorization under the served mixture (serving.aggregation, the posterior by default): facts
   recalled exactly (the greedy completion starts with the answer) beside the answer-token loss,
   for the person to be forgotten, other trained people and strangers; the uniform mean's loss
   beside it, and greedy completions.
4. Forget one person with --fast: an approximate version serves in seconds, then the exact
   retrain replaces it; recall and loss at every version; print the certificate.
5. `rollback 1` is refused; `versions` and `requests`.
6. Time of the exact deletion beside the full retrain; a summary; a report with plots (recall and
   loss by version, deletion time) under <store>/reports/, logged to the MLflow run of the exact
   version.
The demo store is wiped and rebuilt on every run (only a store the demo itself created).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass, field

import pyarrow as pa

from pipelines.common import print_certificate, print_requests, print_table, print_versions
from sisa import serving
from sisa.config import SisaConfig
from sisa.data import (
    CHAT,
    TEXT,
    Example,
    as_format,
    from_table,
    ingest_sources,
    make_people,
    make_probes,
    question,
)
from sisa.evidence import Probe
from sisa.evidence.report import DemoReport, write_report
from sisa.forgetting import expected_cost_fraction, roll_back, runner
from sisa.lineage import RequestMode, checkpoints, requests_ledger, versions
from sisa.model import base_model_fingerprint
from sisa.training import run as training
from sisa.training import scheduler
from storage import layout
from storage.errors import RefusedError, StoreError
from storage.store import Store

DEMO_MARKER = "DEMO_STORE"
ANSWER_TOKENS = 12  # greedy tokens per printed completion: more than any fact's answer needs


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 72 - len(text)), flush=True)


def _fresh_store(cfg: SisaConfig) -> None:
    uri = cfg.store.uri
    if "://" in uri:
        raise StoreError("the demo runs on a local store; set store.uri to a local folder")
    if os.path.exists(uri) and os.listdir(uri):
        if not os.path.exists(os.path.join(uri, DEMO_MARKER)):
            raise StoreError(f"{uri} is not empty and the demo did not create it; point store.uri at a new folder")
        shutil.rmtree(uri)


class _Facts:
    """The people's facts as the demo trains, scores and asks them: one-sentence text records
    (scored after the prompt "Ada Lane works as a"), or chat (the user asks "What does Ada Lane
    do for a living?", the assistant's answer is scored and recalled)."""

    def __init__(self, record_format: str):
        self.record_format = record_format
        self.chat = record_format == CHAT

    def items(self, rows: list[dict]) -> tuple[list, list]:
        """(records, prompts) for the scorers: chat records are scored on the assistant's turn."""
        if self.chat:
            return [Example(CHAT, messages=(("user", question(r)), ("assistant", r["text"]))) for r in rows], [
                None
            ] * len(rows)
        return [r["text"] for r in rows], [r["prompt"] for r in rows]

    def query(self, row: dict) -> str:
        return question(row) if self.chat else row["prompt"]

    def truth(self, row: dict) -> str:
        return row["text"] if self.chat else row["answer"]

    def ask(self, ens, row: dict, max_new_tokens: int) -> str:
        if self.chat:
            return serving.generate_chat(ens, [("user", question(row))], max_new_tokens)
        return serving.generate_text(ens, row["prompt"], max_new_tokens=max_new_tokens)

    def recalled(self, ens, rows: list[dict]) -> int:
        """How many greedy completions (chat replies) start with their answer, decoded together
        and only as far as each needs."""
        if not rows:
            return 0
        prompts = [serving.chat_prompt(ens, [("user", question(r))]) if self.chat else r["prompt"] for r in rows]
        return sum(serving.recalls(ens, prompts, [self.truth(r) for r in rows], add_special_tokens=not self.chat))


def _measure(store, cfg, shards, groups: dict[str, list[dict]], facts: _Facts) -> dict:
    """Per group: mean answer-token loss under each aggregation (one batched forward) and, under
    the served one, recall: facts whose greedy completion starts with the answer."""
    ens = serving.load_ensemble(store, cfg, shards)
    loss: dict[str, dict[str, float | None]] = {}
    recalled: dict[str, tuple[int, int]] = {}
    for name, rows in groups.items():
        items, prompts = facts.items(rows)
        mixed, _ = serving.score_aggregations(ens, items, prompts, cfg.training.max_length)
        for aggregation, vals in mixed.items():
            loss.setdefault(aggregation, {})[name] = serving.mean(vals)
        recalled[name] = (facts.recalled(ens, rows), len(rows))
    return {"loss": loss, "recall": recalled, "ensemble": ens}


def _frac(x: tuple[int, int] | None) -> str:
    return "-" if x is None else f"{x[0]}/{x[1]}"


@dataclass
class _Demo:
    """What the demo's steps share: the store, the people, and the figures of every version."""

    cfg: SisaConfig
    shape: _Facts
    rows: list[dict]
    unseen: list[dict]
    facts: int
    store: Store | None = None
    full_train_s: float = 0.0
    losses: dict[str, dict] = field(default_factory=dict)
    recalls: dict[str, dict] = field(default_factory=dict)
    seen_versions: dict[str, int] = field(default_factory=dict)

    @property
    def target_subject(self) -> str:
        return self.rows[0]["subject_id"]

    @property
    def target(self) -> list[dict]:
        return [r for r in self.rows if r["subject_id"] == self.target_subject]

    @property
    def retained(self) -> list[dict]:
        return [r for r in self.rows if r["subject_id"] != self.target_subject][: 8 * self.facts]

    @property
    def groups(self) -> dict[str, list[dict]]:
        return {"forgotten": self.target, "retained": self.retained, "strangers": self.unseen}

    def record(self, label: str, m: dict) -> None:
        self.losses[label], self.recalls[label] = m["loss"][self.cfg.serving.aggregation], m["recall"]

    def show(self, ens, who: str, r: dict) -> None:
        completion = self.shape.ask(ens, r, ANSWER_TOKENS * (3 if self.shape.chat else 1))
        gap = " " if self.shape.chat else ""
        print(f"  [{who}] {self.shape.query(r)!s} →{gap}{completion!s}   (truth:{gap}{self.shape.truth(r)})")


def _ingest(d: _Demo, people: int, strangers: int) -> None:
    cfg = d.cfg
    _banner(f"1. fictitious people as {d.shape.record_format} records, ingested with provenance")
    _fresh_store(cfg)
    table = pa.Table.from_pylist(as_format(d.rows, d.shape.record_format))
    os.makedirs(cfg.store.uri, exist_ok=True)
    open(os.path.join(cfg.store.uri, DEMO_MARKER), "w").close()  # before anything: a re-run may wipe it
    res = ingest_sources(cfg, [from_table(table, "demo-people")])[0]
    print(
        f"ingested {res.records} records about {people} people into {cfg.sharding.num_shards} shards (ingest "
        f"{res.ingest_id}); {strangers} strangers kept aside"
    )
    d.store = Store.open(cfg.store.uri)
    print_table([{"shard_id": k, "records": v} for k, v in sorted(res.shards.items())], ["shard_id", "records"])


def _train(d: _Demo) -> None:
    cfg, store = d.cfg, d.store
    _banner(
        f"2. train {cfg.sharding.num_shards} shard adapters over slices of {cfg.sharding.slice_size} ({cfg.model.name})"
    )
    # The base model conversion (first run) and the Ray start are one-off costs, not training.
    base_model_fingerprint(cfg.model)
    scheduler.prepare(cfg.scheduler)
    t0 = time.perf_counter()
    with store.job("demo train", cfg.store.lock_timeout_s):
        tr = training.train(store, cfg)
    d.full_train_s = time.perf_counter() - t0
    print(
        f"model version {tr.model_version} trained in {d.full_train_s:.1f}s "
        f"({sum(r.tokens for r in tr.trained) / max(d.full_train_s, 1e-9):.0f} tokens/s overall)"
    )


def _memorization(d: _Demo) -> None:
    cfg, store, shape = d.cfg, d.store, d.shape
    _banner("3. what the model remembers")
    v1 = versions.current(store)
    m1 = _measure(store, cfg, versions.shard_checkpoints(v1), d.groups, shape)
    served = cfg.serving.aggregation
    d.record(f"v{v1.model_version} trained", m1)
    what = (
        "the greedy reply starts with the assistant's answer"
        if shape.chat
        else "greedy completion starts with the answer"
    )
    print(f"facts recalled exactly ({what}) under the served {served} mixture, and mean answer-token loss:")
    print(
        f"  {served:<9} person to be forgotten {_frac(m1['recall']['forgotten'])} recalled, loss "
        f"{m1['loss'][served]['forgotten']:.3f}; "
        f"other trained people {_frac(m1['recall']['retained'])}, loss {m1['loss'][served]['retained']:.3f}; "
        f"strangers {_frac(m1['recall']['strangers'])}, loss {m1['loss'][served]['strangers']:.3f}"
    )
    for aggregation, lv in m1["loss"].items():
        if aggregation != served:
            print(
                f"  {aggregation:<9} (not served) loss: person to be forgotten {lv['forgotten']:.3f}, other trained "
                f"people {lv['retained']:.3f}, strangers {lv['strangers']:.3f}"
            )
    for r in d.target[:2] + d.unseen[:1]:
        d.show(m1["ensemble"], "to be forgotten" if r in d.target else "stranger", r)


def _forget(d: _Demo):
    cfg, store = d.cfg, d.store
    _banner("4. forget one person: --fast serves an approximate version, then the exact retrain")

    def on_version(kind: str, entry: versions.ModelVersion) -> None:
        d.seen_versions[kind] = entry.model_version
        m = _measure(store, cfg, versions.shard_checkpoints(entry), d.groups, d.shape)
        label = f"v{entry.model_version} {kind}"
        d.record(label, m)
        lv = d.losses[label]
        print(
            f"  v{entry.model_version} ({kind}): forgotten person {_frac(m['recall']['forgotten'])} recalled, loss "
            f"{lv['forgotten']:.3f}; "
            f"retained {_frac(m['recall']['retained'])}, loss {lv['retained']:.3f}; strangers "
            f"{_frac(m['recall']['strangers'])}, loss {lv['strangers']:.3f}"
        )

    holdout = d.shape.items(d.unseen)
    # Probes (`sisa synth --probes`): the person's facts reworded and asked as questions, and two
    # other people's facts for locality; the certificate shows the trio, leak@k and the MIA AUC.
    probes = [Probe(**p) for p in make_probes(d.target) if p["kind"] != "locality"]
    probes += [Probe(**p) for p in make_probes(d.retained[: 2 * d.facts]) if p["kind"] == "locality"]
    with store.job("demo forget", cfg.store.lock_timeout_s):
        fr = runner.forget(
            store,
            cfg,
            "subject",
            [d.target_subject],
            RequestMode.FAST,
            holdout=holdout,
            on_version=on_version,
            log=lambda msg: print(msg, flush=True),
            probes=probes,
        )
    exact_entry = versions.current(store)
    ens_now = serving.load_ensemble(store, cfg, versions.shard_checkpoints(exact_entry))
    for r in d.target[:2]:
        d.show(ens_now, f"forgotten, exact v{exact_entry.model_version}", r)
    print_certificate(fr.request)
    return fr.request


def _rollback_refused(d: _Demo) -> None:
    cfg, store = d.cfg, d.store
    _banner("5. rollback to version 1 would bring the person back")
    try:
        with store.job("demo rollback", cfg.store.lock_timeout_s):
            roll_back(store, cfg, 1)
        print("UNEXPECTED: rollback 1 was allowed")
    except RefusedError as e:
        print(f"sisa rollback 1 → refused: {e.message}")
    print()
    print_versions(versions.all_versions(store), store.current_version())
    print()
    print_requests(requests_ledger.all_requests(store))


def _cost(d: _Demo, req, t_start: float) -> list[tuple[str, str]]:
    cfg, store = d.cfg, d.store
    _banner("6. cost of the deletion vs a full retrain")
    t = req.timings
    exact_s = t.get("delete_data_s", 0) + t.get("retrain_s", 0) + t.get("purge_s", 0)
    plan = req.plan
    slices_per_shard = max(len(checkpoints.shard_slices(store, s)) for s in range(store.num_shards))
    expected = expected_cost_fraction(slices_per_shard, cfg.sharding.slice_mode) / store.num_shards
    summary = [
        ("full retrain of all shards (measured, step 2)", f"{d.full_train_s:.1f} s"),
        ("exact deletion: delete + retrain + purge (measured)", f"{exact_s:.1f} s"),
        ("measured speedup", f"{d.full_train_s / exact_s:.1f}x" if exact_s else "-"),
        (
            "theoretical cost of this deletion (record-passes)",
            f"{plan.cost_fraction:.1%} of a full retrain → {1 / plan.cost_fraction:.1f}x"
            if plan.cost_fraction
            else "-",
        ),
        ("expected cost over uniformly random slices", f"{expected:.1%} of a full retrain"),
        ("approximate fast path served after", f"{t.get('fast_path_s', 0):.1f} s"),
        ("shards retrained / reused byte for byte", f"{len(plan.shards)} / {len(plan.unaffected_shards)}"),
        ("lineage check", "passed" if req.certificate["lineage_check"]["passed"] else "FAILED"),
        ("checkpoints purged", str(len(req.purge["checkpoints"]))),
        ("demo wall time", f"{time.perf_counter() - t_start:.0f} s"),
    ]
    for k, v in summary:
        print(f"  {k:<52} {v}")
    return summary


def _report(d: _Demo, req, summary: list[tuple[str, str]]) -> list[str]:
    cfg, store = d.cfg, d.store
    t = req.timings
    exact_s = t.get("delete_data_s", 0) + t.get("retrain_s", 0) + t.get("purge_s", 0)
    times = {"full_train": d.full_train_s, "exact_delete": exact_s, "fast_path": t.get("fast_path_s", 0.0)}
    rep = DemoReport(
        cfg.model.name,
        store.num_shards,
        len(d.rows),
        d.losses,
        d.recalls,
        times,
        req.plan.cost_fraction,
        req.request_id,
        store.hash_id(d.target_subject),
        summary,
        d.shape.record_format,
    )
    out_dir = store.fs.full(layout.REPORTS)
    files = write_report(rep, out_dir)
    exact_version = store.current_version()
    if cfg.tracking.enabled:
        from sisa.serving import Tracker

        Tracker(cfg.tracking, store.fs.local_path("")).log_artifacts(exact_version, files, "demo-report")
    print(
        f"\nreport: {os.path.join(out_dir, 'report.html')} (plots: memorization_by_version.png, deletion_time.png); "
        f"logged to MLflow run v{exact_version}"
    )
    db = f"sqlite:///{os.path.abspath(os.path.join(cfg.store.uri, 'mlflow.db'))}"
    print(f"browse MLflow: .venv/bin/mlflow ui --backend-store-uri {db} (binds 127.0.0.1)")
    if cfg.tracking.enabled:
        model_uri = f"models:/{cfg.tracking.registered_model}@{cfg.tracking.alias}"
        print(
            f"serve v{exact_version} over HTTP: MLFLOW_TRACKING_URI={db} .venv/bin/mlflow models serve -m "
            f"{model_uri} --env-manager local -h 127.0.0.1 -p 5001"
        )
    return files


def run(cfg: SisaConfig, people: int = 32, strangers: int = 8, facts: int = 2, record_format: str = CHAT) -> dict:
    t_start = time.perf_counter()
    rows = make_people(people, seed=cfg.store.seed, facts_per_person=facts)
    unseen = make_people(strangers, seed=cfg.store.seed, facts_per_person=facts, start=people)
    d = _Demo(cfg, _Facts(record_format), rows, unseen, facts)
    _ingest(d, people, strangers)  # 1. data
    _train(d)  # 2. train
    _memorization(d)  # 3. what the model remembers
    req = _forget(d)  # 4. forget with the fast path
    _rollback_refused(d)  # 5. rollback refused; versions and requests
    summary = _cost(d, req, t_start)  # 6. time and summary
    files = _report(d, req, summary)
    return {
        "losses": d.losses,
        "recall": d.recalls,
        "summary": dict(summary),
        "request_id": req.request_id,
        "report": files,
        "versions": d.seen_versions,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--people", type=int, default=32, help="fictitious people to train on (default 32)")
    p.add_argument("--strangers", type=int, default=8, help="people never trained on, the baseline (default 8)")
    p.add_argument(
        "--facts", type=int, default=2, choices=range(1, 6), metavar="1..5", help="facts per person (default 2)"
    )
    p.add_argument(
        "--format",
        default=CHAT,
        choices=[TEXT, CHAT],
        help="chat (default): the user asks about the person, the assistant answers, trained through the model's chat "
        "template and scored on the assistant's answers; text: one-sentence facts, scored after the prompt",
    )


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    run(cfg, args.people, args.strangers, args.facts, args.format)
    return 0
