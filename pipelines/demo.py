"""The whole story on one machine: train on people, remember them, forget one, prove it.

    make demo            # = sisa demo --config configs/demo.yaml --format text (one-sentence facts)
    sisa demo --config configs/demo.yaml                         # the people as chat (~5x the tokens)
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
6. A second, typical deletion (the person whose planned retrain is nearest the mean over all
   people; exact, no evidence), so the cost table shows the dearest case (this person: slice 0 of
   the largest shard) beside a typical one, both measured, against the full training; the time of
   every step; a report with plots (recall and loss by version, deletion time) under
   <store>/reports/, logged to the MLflow run of the last version.
The demo store is wiped and rebuilt on every run (only a store the demo itself created).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass, field

import pyarrow as pa
from sisa.pipelines.common import print_certificate, print_requests, print_table, print_versions
from sisa.storage import layout
from sisa.storage.errors import RefusedError, StoreError
from sisa.storage.store import Store

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
from sisa.forgetting import RequestOptions, expected_cost_fraction, roll_back, runner
from sisa.lineage import RequestMode, checkpoints, requests_ledger, versions
from sisa.model import base_model_fingerprint
from sisa.training import run as training
from sisa.training import scheduler

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

    def prompts(self, ens, rows: list[dict]) -> list[str]:
        return [serving.chat_prompt(ens, [("user", question(r))]) if self.chat else r["prompt"] for r in rows]

    def ask_all(self, ens, rows: list[dict], max_new_tokens: int) -> list[str]:
        """Greedy completions (chat replies) of every row's prompt, decoded together."""
        prompts = self.prompts(ens, rows)
        return serving.generate_many(ens, prompts, [max_new_tokens] * len(rows), add_special_tokens=not self.chat)

    def recalled(self, ens, groups: dict[str, list[dict]]) -> dict[str, tuple[int, int]]:
        """Per group, how many greedy completions (chat replies) start with their answer, and of how
        many: every group's prompts decoded together, each only as far as its answer needs."""
        rows = [r for g in groups.values() for r in g]
        hits = (
            serving.recalls(ens, self.prompts(ens, rows), [self.truth(r) for r in rows], not self.chat) if rows else []
        )
        out, start = {}, 0
        for name, g in groups.items():
            out[name] = (sum(hits[start : start + len(g)]), len(g))
            start += len(g)
        return out


def _measure(store, cfg, shards, groups: dict[str, list[dict]], facts: _Facts, pool: serving.EnsemblePool) -> dict:
    """Per group: mean answer-token loss under each aggregation (one batched forward) and, under
    the served one, recall: facts whose greedy completion starts with the answer."""
    ens = pool.ensemble(store, cfg, shards)
    loss: dict[str, dict[str, float | None]] = {}
    with serving.one_thread():  # small batches: see one_thread
        for name, rows in groups.items():
            items, prompts = facts.items(rows)
            mixed, _ = serving.score_aggregations(ens, items, prompts, cfg.training.max_length)
            for aggregation, vals in mixed.items():
                loss.setdefault(aggregation, {})[name] = serving.mean(vals)
        recall = facts.recalled(ens, groups)
    return {"loss": loss, "recall": recall, "ensemble": ens}


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
    step_s: list[tuple[str, float]] = field(default_factory=list)  # (step, wall seconds), in order
    typical_s: float | None = None  # the typical deletion's delete + retrain + purge (step 6)
    # Every version the demo and the request's evidence measure, on one base: each checkpoint's
    # adapter is loaded once, not once per measure.
    models: serving.EnsemblePool = field(default_factory=serving.EnsemblePool)

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

    def show(self, ens, shown: list[tuple[str, dict]]) -> None:
        """Each (who, fact)'s greedy completion beside the truth, every prompt decoded together."""
        with serving.one_thread():
            completions = self.shape.ask_all(ens, [r for _, r in shown], ANSWER_TOKENS * (3 if self.shape.chat else 1))
        gap = " " if self.shape.chat else ""
        for (who, r), completion in zip(shown, completions, strict=True):
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
    m1 = _measure(store, cfg, versions.shard_checkpoints(v1), d.groups, shape, d.models)
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
    d.show(m1["ensemble"], [("to be forgotten", r) for r in d.target[:2]] + [("stranger", r) for r in d.unseen[:1]])


def _forget(d: _Demo):
    cfg, store = d.cfg, d.store
    _banner("4. forget one person: --fast serves an approximate version, then the exact retrain")

    def on_version(kind: str, entry: versions.ModelVersion) -> None:
        d.seen_versions[kind] = entry.model_version
        m = _measure(store, cfg, versions.shard_checkpoints(entry), d.groups, d.shape, d.models)
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
            RequestOptions(mode=RequestMode.FAST, holdout=holdout, probes=probes),
            on_version=on_version,
            log=lambda msg: print(msg, flush=True),
            models=d.models,
        )
    exact_entry = versions.current(store)
    ens_now = d.models.ensemble(store, cfg, versions.shard_checkpoints(exact_entry))
    d.show(ens_now, [(f"forgotten, exact v{exact_entry.model_version}", r) for r in d.target[:2]])
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


def _exact_s(req) -> float:
    t = req.timings
    return t.get("delete_data_s", 0) + t.get("retrain_s", 0) + t.get("purge_s", 0)


def _typical_deletion(d: _Demo):
    """Another person's deletion, of typical cost: the one whose planned retrain is nearest the
    mean over every person still in the data (dry runs: plans only), carried out exactly with no
    evidence, so that the cost table shows a measured typical case beside the dearest one.
    Returns (its request, the mean planned fraction over all of them)."""
    cfg, store = d.cfg, d.store
    subjects = sorted({r["subject_id"] for r in d.rows} - {d.target_subject})
    with store.job("demo forget", cfg.store.lock_timeout_s):
        plans = {s: runner.forget(store, cfg, "subject", [s], RequestOptions(dry_run=True)).plan for s in subjects}
        mean = sum(p.cost_fraction for p in plans.values()) / len(plans)
        pick = min(subjects, key=lambda s: (abs(plans[s].cost_fraction - mean), s))
        fr = runner.forget(store, cfg, "subject", [pick], RequestOptions(mode=RequestMode.EXACT, evidence=False))
    return fr.request, mean


def _cost(d: _Demo, req, t_start: float) -> list[tuple[str, str]]:
    cfg, store = d.cfg, d.store
    _banner("6. cost of the deletion vs a full retrain: the dearest case and a typical one")
    t0 = time.perf_counter()
    typical, mean = _typical_deletion(d)
    d.typical_s = _exact_s(typical)
    d.step_s.append(("6. typical deletion (exact, no evidence)", time.perf_counter() - t0))
    slices_per_shard = max(len(checkpoints.shard_slices(store, s)) for s in range(store.num_shards))
    expected = expected_cost_fraction(slices_per_shard, cfg.sharding.slice_mode) / store.num_shards

    def case(r) -> str:
        s, plan = _exact_s(r), r.plan
        where = ", ".join(f"shard {p.shard_id} from slice {p.earliest_slice}" for p in plan.shards)
        return (
            f"{s:.1f} s ({d.full_train_s / s:.1f}x faster; {where}: {plan.cost_fraction:.1%} of the work, "
            f"{1 / plan.cost_fraction:.1f}x in theory)"
            if s and plan.cost_fraction
            else "-"
        )

    t = req.timings
    summary = [
        ("full retrain of all shards (measured, step 2)", f"{d.full_train_s:.1f} s"),
        ("dearest deletion: this person (measured)", case(req)),
        ("typical deletion: another person (measured)", case(typical)),
        (
            "expected over a uniformly random person (plans)",
            f"{mean:.1%} of the work → {1 / mean:.1f}x" if mean else "-",
        ),
        ("expected over uniformly random equal slices", f"{expected:.1%} of a full retrain"),
        ("approximate fast path served after", f"{t.get('fast_path_s', 0):.1f} s"),
        ("shards retrained / reused byte for byte", f"{len(req.plan.shards)} / {len(req.plan.unaffected_shards)}"),
        ("lineage check", "passed" if req.certificate["lineage_check"]["passed"] else "FAILED"),
        ("checkpoints purged", str(len(req.purge["checkpoints"]))),
        ("demo wall time", f"{time.perf_counter() - t_start:.0f} s"),
        ("time per step", "; ".join(f"{name} {sec:.0f} s" for name, sec in d.step_s)),
    ]
    for k, v in summary:
        print(f"  {k:<52} {v}")
    return summary


def _report(d: _Demo, req, summary: list[tuple[str, str]]) -> list[str]:
    cfg, store = d.cfg, d.store
    times = {
        "full_train": d.full_train_s,
        "exact_delete": _exact_s(req),
        "typical_delete": d.typical_s,
        "fast_path": req.timings.get("fast_path_s", 0.0),
    }
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
    exact_version = store.current_version()  # the typical deletion's exact version
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


def _timed(d: _Demo, name: str, step, *args):
    t0 = time.perf_counter()
    try:
        return step(*args)
    finally:
        d.step_s.append((name, time.perf_counter() - t0))


def run(cfg: SisaConfig, people: int = 32, strangers: int = 8, facts: int = 2, record_format: str = CHAT) -> dict:
    t_start = time.perf_counter()
    rows = make_people(people, seed=cfg.store.seed, facts_per_person=facts)
    unseen = make_people(strangers, seed=cfg.store.seed, facts_per_person=facts, start=people)
    d = _Demo(cfg, _Facts(record_format), rows, unseen, facts)
    _timed(d, "1. ingest", _ingest, d, people, strangers)  # 1. data
    _timed(d, "2. train", _train, d)  # 2. train
    _timed(d, "3. memorization", _memorization, d)  # 3. what the model remembers
    req = _timed(d, "4. forget (fast + exact + evidence)", _forget, d)  # 4. forget with the fast path
    _timed(d, "5. rollback refused", _rollback_refused, d)  # 5. rollback refused; versions and requests
    summary = _cost(d, req, t_start)  # 6. a typical deletion beside this one; time and summary
    files = _report(d, req, summary)
    print(f"demo wall time {time.perf_counter() - t_start:.0f} s")
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
