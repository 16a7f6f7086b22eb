"""Utility benchmark: what the served model keeps of what it learned, by number of shards S, slice
mode and way of serving, beside one adapter trained on all the data.

    .venv/bin/python benchmarks/utility.py --model tiny                      # ~3 min
    .venv/bin/python benchmarks/utility.py --model smollm2 --modes cumulative --threads 1   # 40+ min on 2 shared cores

Data: fictitious people (sisa/data/synthetic.py, two one-sentence facts each: "<name> works as a",
"<name> lives in"), strangers made the same way and never trained on, and a few hundred generic
sentences the base model should keep (written here; nothing is downloaded).

For each slice mode and S in {1, 4, 8} (or --shards) a store is trained (serially, the model's
config with training.min_steps_per_slice `auto`, sisa's default, or --min-steps), then served five ways:

    one adapter  S=1: one adapter on all the data, the baseline of every ratio
    uniform      the plain mean of the shards' next-token distributions
    posterior    the likelihood-weighted mixture (serving.aggregation=posterior, every shard)
    top-m        the posterior, decoding with the m shards of highest weight after the prompt
    merged       `sisa export`'s one merged adapter (add_weighted_adapter "cat", 1/S each)

Measured (tokens/s timed in interleaved rounds beside one shard adapter decoding alone): exact
recall of the trained facts (the greedy completion of the prompt starts with the answer, decoded
as `sisa generate` decodes: serving.recalls),
the mean answer-token loss of trained facts and of strangers' facts, the perplexity of the
generic text (its final eos not scored; the base model's beside it), generation tokens/s
(greedy decoding of a fixed number of tokens from a few fact prompts) and the optimizer steps the
store trained (the training cost, against one adapter's). Top-m's answer losses are those of what
top-m decoding mixes: the posterior over the m shards of highest weight after each prompt; its
strangers' and generic losses are the posterior's. Then one person is forgotten at the largest S
(exact deletion) and their facts' answer loss under the posterior mixture is compared with the
strangers' (the base model's ratio for the same people beside it: some people are harder than
others before any training). Ratios to the one-adapter baseline come first.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

import _common as C  # sets the offline environment before torch, Ray and MLflow load
import pyarrow as pa
import torch
from sisa.storage.store import Store

from sisa import serving
from sisa.config import SisaConfig
from sisa.data import from_table, ingest_sources, make_people
from sisa.forgetting import runner
from sisa.lineage import RequestMode, versions
from sisa.model import (
    aggregated_sequence_losses,
    encode_texts,
    generate,
    load_base_model,
    merge_adapters,
    mixture,
    sequence_losses,
)
from sisa.training import run as training
from sisa.training import scheduler

TARGETS = {
    "recall": ">= 95% of one adapter's at every S (posterior and top-1)",
    "posterior top-m generation tokens/s": ">= 50% of one adapter's",
    "forgotten person's loss": "within ±10% of strangers'",
    "generic perplexity": "within 5% of one adapter's",
}
# What each model trains with, beside its config (benchmarks/_common.py MODELS). SmolLM2 keeps the
# demo's LoRA (r=16 on every linear projection, lr 1e-3, 10 epochs); the tiny model memorizes with
# LoRA on every projection and more epochs.
MODEL_OVERRIDES = {
    "tiny": [
        "training.epochs=30",
        "lora.r=8",
        "lora.alpha=16",
        # lm_head too: the random 2-layer model cannot memorize names through its blocks alone
        "lora.target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head",
        "training.max_length=48",
    ],
    "smollm2": [],
}
DEFAULT_PEOPLE = {"tiny": 32, "smollm2": 24}


# -- generic text ---------------------------------------------------------------------------------------
_SUBJECTS = [
    "The cat",
    "A small dog",
    "My neighbour",
    "The teacher",
    "The old man",
    "A young girl",
    "The farmer",
    "Our team",
    "The baker",
    "The children",
    "My brother",
    "The nurse",
]
_ACTIONS = [
    "reads a book",
    "walks to the park",
    "drinks a cup of tea",
    "opens the window",
    "writes a letter",
    "cooks dinner",
    "plays the piano",
    "waters the garden",
    "fixes the bike",
    "paints the fence",
    "feeds the birds",
    "cleans the kitchen",
]
_TIMES = [
    "in the morning.",
    "every evening.",
    "on Sundays.",
    "after lunch.",
    "before school.",
    "at night.",
    "when it rains.",
    "twice a week.",
]
_FACTS = [
    "Water freezes at zero degrees Celsius.",
    "The sun rises in the east and sets in the west.",
    "A week has seven days.",
    "Bees make honey from the nectar of flowers.",
    "The moon goes around the earth.",
    "Fish breathe through their gills.",
    "Paris is the capital of France.",
    "Plants need light and water to grow.",
    "There are twelve months in a year.",
    "Ice is lighter than liquid water, so it floats.",
    "Most birds can fly.",
    "The ocean is salty.",
    "Summer is usually warmer than winter.",
    "A triangle has three sides.",
    "Trains run on rails.",
    "Bread is made from flour, water and yeast.",
    "Cows eat grass.",
    "Snow falls when it is cold.",
    "The heart pumps blood through the body.",
    "Books are kept in a library.",
]


def generic_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` short everyday sentences: plain facts, then subject-action-time combinations, shuffled
    by a seeded generator (the same list every run)."""
    combos = [f"{s} {a} {t}" for s in _SUBJECTS for a in _ACTIONS for t in _TIMES]
    random.Random(seed).shuffle(combos)
    return (_FACTS + combos)[:n]


# -- measuring ------------------------------------------------------------------------------------------
@dataclass
class Served:
    """One way of serving one store, measured."""

    mode: str
    shards: int
    variant: str
    recall: int
    facts: int
    answer_loss: float
    strangers_loss: float
    generic_ppl: float
    tokens_per_s: float
    train_s: float
    steps: int  # optimizer steps the store trained, all shards together
    extra: dict = field(default_factory=dict)


def generic_batch(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Texts encoded as records are (each ends with eos), the eos not scored: the generic text's
    perplexity is about its words, and a fine-tuned adapter learns where its records end."""
    batch = encode_texts(tokenizer, texts, max_length)
    labels = batch["labels"].clone()
    last = batch["attention_mask"].sum(1) - 1
    labels[torch.arange(len(texts)), last] = -100
    return {**batch, "labels": labels}


def scored_tokens(batch: dict[str, torch.Tensor]) -> list[int]:
    """Tokens each row is scored on (what a per-record mean loss averages over)."""
    return (batch["labels"][:, 1:] != -100).sum(1).tolist()


@torch.no_grad()
def generic_losses(
    ens: serving.Ensemble, texts: list[str], max_length: int, batch_size: int = 16
) -> tuple[dict[str, list[float]], list[int]]:
    """({aggregation: loss per text}, scored tokens per text) for the generic text."""
    names, prior = ens.adapter_names(), ens.log_prior()
    out: dict[str, list[float]] = {}
    counts: list[int] = []
    for i in range(0, len(texts), batch_size):
        batch = generic_batch(ens.tokenizer, texts[i : i + batch_size], max_length)
        mixed, _ = aggregated_sequence_losses(ens.model, names, batch, prior)
        for a, v in mixed.items():
            out.setdefault(a, []).extend(v.tolist())
        counts += scored_tokens(batch)
    return out, counts


def perplexity(losses: list[float], counts: list[int]) -> float:
    return math.exp(sum(loss * n for loss, n in zip(losses, counts, strict=True)) / sum(counts))


def recall(ens: serving.Ensemble, facts: list[dict]) -> int:
    """Facts whose greedy completion under `ens` starts with the answer (serving.recalls: what
    `sisa generate` decodes, top_shards included)."""
    return sum(serving.recalls(ens, [r["prompt"] for r in facts], [r["answer"] for r in facts]))


def speed(ens: serving.Ensemble, prompts: list[str], new_tokens: int) -> tuple[float, float]:
    """(generated tokens/s, seconds): greedy decoding of exactly `new_tokens` per prompt (past
    eos, so every way of serving decodes the same number of tokens)."""
    generate(
        ens.model,
        ens.tokenizer,
        ens.adapter_names(),
        prompts[0],
        2,
        aggregation=ens.aggregation,
        log_prior=ens.log_prior(),
        top_shards=ens.top_shards,
    )  # warm-up
    started = time.perf_counter()
    for p in prompts:
        generate(
            ens.model,
            ens.tokenizer,
            ens.adapter_names(),
            p,
            new_tokens,
            aggregation=ens.aggregation,
            log_prior=ens.log_prior(),
            top_shards=ens.top_shards,
            ignore_eos=True,
        )
    wall = time.perf_counter() - started
    return len(prompts) * new_tokens / wall, wall


def score(ens: serving.Ensemble, rows: list[dict], max_length: int) -> dict[str, list[float]]:
    """Per-record answer-token losses (the eos after the answer included), per aggregation."""
    mixed, _ = serving.score_aggregations(ens, [r["text"] for r in rows], [r["prompt"] for r in rows], max_length)
    return mixed


@torch.no_grad()
def base_losses(cfg: SisaConfig, facts: list[dict], strangers: list[dict], generic: list[str]) -> dict[str, float]:
    """The base model without any adapter: answer losses and generic perplexity."""
    base, tok = load_base_model(cfg.model)

    def losses(rows):
        out = []
        for i in range(0, len(rows), 16):
            chunk = rows[i : i + 16]
            batch = serving.encode_for_scoring(
                tok, [r["text"] for r in chunk], [r["prompt"] for r in chunk], cfg.training.max_length
            )
            out += sequence_losses(base, batch).tolist()
        return out

    per_fact, per_stranger = losses(facts), losses(strangers)
    generic_l, counts = [], []
    for i in range(0, len(generic), 16):
        batch = generic_batch(tok, generic[i : i + 16], cfg.training.max_length)
        generic_l += sequence_losses(base, batch).tolist()
        counts += scored_tokens(batch)
    return {
        "answer_loss": serving.mean(per_fact),
        "strangers_loss": serving.mean(per_stranger),
        "generic_ppl": perplexity(generic_l, counts),
        "per_fact": per_fact,
        "per_stranger": per_stranger,
    }


def routed_losses(ens: serving.Ensemble, rows: list[dict], max_length: int, m: int) -> list[float]:
    """Per record: the answer loss under the posterior over only the m shards of highest weight
    after its prompt (renormalised), i.e. what top-m decoding mixes while it decodes the answer."""
    keys = sorted(ens.names)
    prompts = [r["prompt"] for r in rows]
    evidence = []  # [k, rows]: log prior + log-likelihood of the prompt, per shard
    with torch.no_grad():
        for i in range(0, len(prompts), 16):
            batch = generic_batch(ens.tokenizer, prompts[i : i + 16], max_length)  # the prompt's tokens, no eos
            _, per = mixture.aggregated_sequence_losses(ens.model, ens.adapter_names(keys), batch, ens.log_prior(keys))
            counts = torch.tensor(scored_tokens(batch), dtype=torch.float32)
            evidence.append(torch.stack([-per[name].float().cpu() * counts for name in ens.adapter_names(keys)]))
    log_post = torch.cat(evidence, dim=1) + ens.log_prior(keys).float().view(-1, 1)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(len(rows)):
        top = mixture.top_shard_indices(log_post[:, i], m)
        groups.setdefault(tuple(keys) if top is None else tuple(keys[j] for j in top.tolist()), []).append(i)
    out = [0.0] * len(rows)
    for shards, idx in groups.items():
        mixed, _ = serving.score_aggregations(
            ens, [rows[i]["text"] for i in idx], [prompts[i] for i in idx], max_length, shards=list(shards)
        )
        for i, loss in zip(idx, mixed["posterior"], strict=True):
            out[i] = loss
    return out


def train_store(cfg: SisaConfig, rows: list[dict]) -> tuple[Store, float, int]:
    """(store, training seconds, optimizer steps of all shards together)."""
    ingest_sources(cfg, [from_table(pa.Table.from_pylist(rows), "people")])
    store = Store.open(cfg.store.uri)
    with store.lock("utility benchmark", cfg.store.lock_timeout_s), C.timer() as t:
        res = training.train(store, cfg)
    return store, t[0], sum(s.steps for r in res.trained for s in r.slices)


def measure_store(
    store: Store,
    cfg: SisaConfig,
    mode: str,
    shards: int,
    trained: tuple[float, int],
    facts: list[dict],
    strangers: list[dict],
    generic: list[str],
    top_ms: list[int],
    timing: tuple[int, int, int],
    skip: frozenset[str] = frozenset(),
) -> list[Served]:
    """Every way of serving this store, from one PeftModel holding every adapter (and the merge).

    Tokens/s are timed in interleaved rounds (best of each), beside one shard adapter decoding
    alone in the same rounds: one adapter's speed does not depend on what it learned, and the
    machine's load then weighs on both sides of each ratio alike."""
    ens = serving.load_ensemble(store, cfg, versions.shard_checkpoints(versions.current(store)))
    tok, max_length = ens.tokenizer, cfg.training.max_length
    fact_l, stranger_l = score(ens, facts, max_length), score(ens, strangers, max_length)
    generic_l, counts = generic_losses(ens, generic, max_length)
    variants: list[tuple[str, serving.Ensemble, tuple]] = []

    def losses(aggregation: str) -> tuple:
        return fact_l[aggregation], stranger_l[aggregation], generic_l[aggregation]

    if shards == 1:
        variants.append(
            ("one adapter", serving.Ensemble(ens.model, tok, ens.names, "posterior", None, 0), losses("posterior"))
        )
    else:
        if "uniform" not in skip:
            variants.append(
                ("uniform", serving.Ensemble(ens.model, tok, ens.names, "uniform", None, 0), losses("uniform"))
            )
        variants.append(
            ("posterior", serving.Ensemble(ens.model, tok, ens.names, "posterior", None, 0), losses("posterior"))
        )
        for m in [m for m in top_ms if m < shards]:
            top = serving.Ensemble(ens.model, tok, ens.names, "posterior", None, m)
            variants.append(
                (
                    f"top-{m}",
                    top,
                    (routed_losses(top, facts, max_length, m), stranger_l["posterior"], generic_l["posterior"]),
                )
            )
    if shards > 1 and "merged" not in skip:
        merged_dir = tempfile.mkdtemp(prefix="sisa-utility-merged-")
        try:
            names = ens.adapter_names()
            merge_adapters(ens.model, names, [1.0 / len(names)] * len(names), "merged", merged_dir)
        finally:
            shutil.rmtree(merged_dir, ignore_errors=True)
        merged = serving.Ensemble(ens.model, tok, {0: "merged"}, "posterior", None, 0)
        variants.append(
            (
                "merged",
                merged,
                (
                    score(merged, facts, max_length)["posterior"],
                    score(merged, strangers, max_length)["posterior"],
                    generic_losses(merged, generic, max_length)[0]["posterior"],
                ),
            )
        )

    # Speed: every variant and one shard adapter alone, round after round; the best round counts.
    one = serving.Ensemble(ens.model, tok, {0: ens.names[min(ens.names)]}, "posterior", None, 0)
    prompts, new_tokens, rounds = [r["prompt"] for r in facts[: timing[0]]], timing[1], timing[2]
    timed = [("one adapter (speed)", one)] + [(name, e) for name, e, _ in variants]
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, e in timed:
            best[name] = max(best.get(name, 0.0), speed(e, prompts, new_tokens)[0])

    out = []
    for name, e, (f, s, g) in variants:
        right = recall(e, facts)
        r = Served(
            mode,
            shards,
            name,
            right,
            len(facts),
            serving.mean(f),
            serving.mean(s),
            perplexity(g, counts),
            best[name],
            *trained,
            {"speed_ratio": best[name] / best["one adapter (speed)"]},
        )
        out.append(r)
        print(
            f"  {mode:<11} S={shards:<2} {name:<12} recall {right}/{len(facts)}  answer loss {r.answer_loss:.3f}  "
            f"strangers {r.strangers_loss:.3f}  generic ppl {r.generic_ppl:.2f}  {r.tokens_per_s:.1f} tok/s "
            f"({r.extra['speed_ratio']:.2f}x one adapter)",
            flush=True,
        )
    return out


def forget_one(store: Store, cfg: SisaConfig, person: list[dict], strangers: list[dict], base: dict) -> dict:
    """Forget one person exactly; their facts' loss under the posterior mixture beside strangers'."""
    max_length = cfg.training.max_length
    before = serving.mean(
        score(
            serving.load_ensemble(store, cfg, versions.shard_checkpoints(versions.current(store))), person, max_length
        )["posterior"]
    )
    with store.lock("utility benchmark forget", cfg.store.lock_timeout_s), C.timer() as t:
        options = runner.RequestOptions(mode=RequestMode.EXACT, evidence=False)
        runner.forget(store, cfg, "subject", [person[0]["subject_id"]], options, log=lambda _msg: None)
    ens = serving.load_ensemble(store, cfg, versions.shard_checkpoints(versions.current(store)))
    after = serving.mean(score(ens, person, max_length)["posterior"])
    strangers_after = serving.mean(score(ens, strangers, max_length)["posterior"])
    ids = {r["record_id"] for r in person}
    base_person = serving.mean(
        [loss for r, loss in zip(base["facts"], base["per_fact"], strict=True) if r["record_id"] in ids]
    )
    return {
        "before": before,
        "after": after,
        "strangers": strangers_after,
        "ratio": after / strangers_after,
        "base_person": base_person,
        "base_strangers": base["strangers_loss"],
        "base_ratio": base_person / base["strangers_loss"],
        "forget_s": t[0],
        "facts": len(person),
    }


# -- the run ----------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument(
        "--people", type=int, default=None, help="people trained on, two facts each (default: tiny 32, SmolLM2 24)"
    )
    p.add_argument("--strangers", type=int, default=8, help="people never trained on (default 8)")
    p.add_argument("--generic", type=int, default=200, help="generic sentences scored for perplexity (default 200)")
    p.add_argument("--shards", default="1,4,8", help="values of S; the first must be 1, the baseline (default 1,4,8)")
    p.add_argument("--modes", default="cumulative,incremental", help="slice modes (default both)")
    p.add_argument("--slice-size", type=int, default=16, help="sharding.slice_size (default 16)")
    p.add_argument("--epochs", type=int, default=None, help="training.epochs (default: tiny 30, SmolLM2 the demo's 10)")
    p.add_argument(
        "--min-steps",
        default="auto",
        help="training.min_steps_per_slice (default auto, sisa's default; tiny.yaml sets 0)",
    )
    p.add_argument("--top-m", default="1,2", help="top_shards values measured (default 1,2)")
    p.add_argument("--timed-prompts", type=int, default=3, help="prompts decoded for tokens/s (default 3)")
    p.add_argument("--timed-tokens", type=int, default=16, help="tokens decoded per timed prompt (default 16)")
    p.add_argument("--timed-rounds", type=int, default=2, help="interleaved timing rounds, best kept (default 2)")
    p.add_argument("--no-forget", action="store_true", help="skip the deletion at the largest S")
    p.add_argument(
        "--skip", default="", help="ways of serving left out: uniform, merged (default none; each decodes every fact)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=C.CPUS,
        help="torch threads (default: every core); 1 on a machine others share: threads that wait for each other spin",
    )
    args = p.parse_args()
    args.shards = [int(s) for s in args.shards.split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    args.top_m = [int(m) for m in args.top_m.split(",") if m]
    args.skip = frozenset(v for v in args.skip.split(",") if v)
    if args.skip - {"uniform", "merged"}:
        p.error("--skip takes uniform and merged")
    if args.shards[0] != 1:
        p.error("--shards should start with 1: one adapter on all data is the baseline")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    people = args.people or DEFAULT_PEOPLE[args.model]
    facts = make_people(people, seed=0, facts_per_person=2)
    strangers = make_people(args.strangers, seed=0, facts_per_person=2, start=people)
    generic = generic_sentences(args.generic)
    root = tempfile.mkdtemp(prefix="sisa-utility-")
    print(
        f"utility benchmark: {args.model}, {people} people x 2 facts ({len(facts)} records), {len(strangers)} "
        f"strangers' facts, {len(generic)} generic sentences; {C.load()}",
        flush=True,
    )
    results: list[Served] = []
    forgot = None
    base = None
    try:
        for mode in args.modes:
            for shards in args.shards:
                extra = [
                    *MODEL_OVERRIDES[args.model],
                    f"sharding.num_shards={shards}",
                    f"sharding.slice_mode={mode}",
                    f"sharding.slice_size={args.slice_size}",
                    # one job's threads: every core when one shard trains alone
                    f"scheduler.threads_per_task={max(1, args.threads // shards)}",
                    "tracking.enabled=false",
                    "deletion.relief=false",
                    # In this process, not Ray's workers (niced to 15: on a shared machine they
                    # starve); what is measured here is serving, not scheduling.
                    "scheduler.backend=serial",
                ]
                if args.epochs:
                    extra.append(f"training.epochs={args.epochs}")
                extra.append(f"training.min_steps_per_slice={args.min_steps}")
                cfg = C.model_config(args.model, f"{root}/{mode}-s{shards}", extra)
                if base is None:
                    base = base_losses(cfg, facts, strangers, generic) | {"facts": facts}
                    print(
                        f"  base model: answer loss {base['answer_loss']:.3f}, strangers "
                        f"{base['strangers_loss']:.3f}, generic ppl {base['generic_ppl']:.2f}",
                        flush=True,
                    )
                scheduler.prepare(cfg.scheduler)
                store, train_s, steps = train_store(cfg, facts)
                print(f"  {mode:<11} S={shards:<2} trained in {train_s:.0f} s, {steps} optimizer steps", flush=True)
                results += measure_store(
                    store,
                    cfg,
                    mode,
                    shards,
                    (train_s, steps),
                    facts,
                    strangers,
                    generic,
                    args.top_m,
                    (args.timed_prompts, args.timed_tokens, args.timed_rounds),
                    args.skip,
                )
                if shards == args.shards[-1] and forgot is None and not args.no_forget and shards > 1:
                    person = [r for r in facts if r["subject_id"] == facts[0]["subject_id"]]
                    forgot = forget_one(store, cfg, person, strangers, base) | {"mode": mode, "shards": shards}
                    print(
                        f"  forgot one person at S={shards}: their answer loss {forgot['before']:.3f} → "
                        f"{forgot['after']:.3f}, strangers {forgot['strangers']:.3f}",
                        flush=True,
                    )
                shutil.rmtree(cfg.store.uri, ignore_errors=True)
        report(args, results, base, forgot)
    finally:
        scheduler.shutdown_ray()
        shutil.rmtree(root, ignore_errors=True)
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s; {C.load()}")


def report(args, results: list[Served], base: dict, forgot: dict | None) -> None:
    baseline = {r.mode: r for r in results if r.variant == "one adapter"}
    print("\n== ratios to one adapter on all data (same slice mode) ==")
    rows = []
    for r in results:
        one = baseline[r.mode]
        rows.append(
            {
                "mode": r.mode,
                "S": r.shards,
                "serving": r.variant,
                "recall": C.fmt_ratio(r.recall / one.recall if one.recall else None),
                "tokens/s": C.fmt_ratio(r.extra["speed_ratio"]),
                "generic ppl": C.fmt_ratio(r.generic_ppl / one.generic_ppl),
                "answer loss": C.fmt_ratio(r.answer_loss / one.answer_loss if one.answer_loss else None),
                "train steps": C.fmt_ratio(r.steps / one.steps if one.steps else None),
            }
        )
    C.table(rows, ["mode", "S", "serving", "recall", "tokens/s", "generic ppl", "answer loss", "train steps"])

    print("\n== targets ==")
    checks = []
    for mode, one in baseline.items():
        for r in results:
            if r.mode == mode and r.variant in ("posterior", "top-1") and one.recall:
                x = r.recall / one.recall
                checks.append(
                    (
                        f"{r.variant} recall at S={r.shards} ({mode})",
                        f"{x:.0%} of one adapter's",
                        TARGETS["recall"],
                        x >= 0.95,
                    )
                )
        for r in results:
            if r.mode == mode and r.variant.startswith("top-"):
                x = r.extra["speed_ratio"]
                checks.append(
                    (
                        f"{r.variant} tokens/s at S={r.shards} ({mode})",
                        f"{x:.0%} of one adapter's",
                        TARGETS["posterior top-m generation tokens/s"],
                        x >= 0.5,
                    )
                )
        for r in results:
            if r.mode == mode and r.variant == "posterior":
                x = r.generic_ppl / one.generic_ppl
                checks.append(
                    (
                        f"posterior generic ppl at S={r.shards} ({mode})",
                        f"{x:.3f}x one adapter's",
                        TARGETS["generic perplexity"],
                        abs(x - 1) <= 0.05,
                    )
                )
    if forgot:
        x = forgot["ratio"]
        checks.append(
            (
                f"forgotten person / strangers, posterior, S={forgot['shards']} ({forgot['mode']})",
                f"{x:.2f}x (base model: {forgot['base_ratio']:.2f}x)",
                TARGETS["forgotten person's loss"],
                abs(x - 1) <= 0.10,
            )
        )
    C.table(
        [{"measure": m, "measured": v, "target": t, "": "ok" if ok else "MISS"} for m, v, t, ok in checks],
        ["measure", "measured", "target", ""],
    )

    print("\n== measured ==")
    print(
        f"base model (no adapter): answer loss {base['answer_loss']:.3f}, strangers {base['strangers_loss']:.3f}, "
        f"generic ppl {base['generic_ppl']:.2f}"
    )
    C.table(
        [
            {
                "mode": r.mode,
                "S": r.shards,
                "serving": r.variant,
                "recall": f"{r.recall}/{r.facts}",
                "answer loss": f"{r.answer_loss:.3f}",
                "strangers loss": f"{r.strangers_loss:.3f}",
                "generic ppl": f"{r.generic_ppl:.2f}",
                "tok/s": f"{r.tokens_per_s:.1f}",
                "train s": f"{r.train_s:.0f}",
                "train steps": str(r.steps),
            }
            for r in results
        ],
        [
            "mode",
            "S",
            "serving",
            "recall",
            "answer loss",
            "strangers loss",
            "generic ppl",
            "tok/s",
            "train s",
            "train steps",
        ],
    )
    if forgot:
        print(
            f"\n== forget one person ({forgot['facts']} facts) at S={forgot['shards']}, {forgot['mode']}, exact, in "
            f"{forgot['forget_s']:.0f} s =="
        )
        print(
            f"their answer loss under the posterior mixture: {forgot['before']:.3f} trained → {forgot['after']:.3f} "
            f"forgotten; strangers {forgot['strangers']:.3f} (ratio {forgot['ratio']:.2f})"
        )
        print(
            f"base model, same people: {forgot['base_person']:.3f} vs strangers {forgot['base_strangers']:.3f} "
            f"(ratio {forgot['base_ratio']:.2f})"
        )


if __name__ == "__main__":
    sys.exit(main())
