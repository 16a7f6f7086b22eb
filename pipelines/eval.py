"""Evaluate the serving model version on a file of records: loss and perplexity; or TOFU's table.

    sisa eval --config configs/tiny.yaml --file heldout.jsonl [--json]
    sisa eval --config configs/demo.yaml --tofu forget10 --reference-store retain-store [--json]

Reports both aggregations of the shards, the posterior mixture and the uniform mean (the one
`serving.aggregation` serves is marked), beside each shard alone. When the records have a
`prompt` column (as `sisa synth` writes), --answer-only scores just the tokens after the prompt.
Prompt-completion and chat records (the ingest formats) are always scored on their completion /
assistant tokens, chat rendered with the base model's chat template as in training.

--tofu SPLIT gives TOFU's measures as open-unlearning defines them (sisa/tofu/metrics.py) for a
store trained on TOFU's chat records (`benchmarks/tofu.py` writes them; user = question,
assistant = answer, subject = author): model utility and its 9 parts, the forget set's truth
ratio, probability and ROUGE-L, and forget quality (the KS test of the forget set's truth ratios)
against a retain model: a version of this store (--reference-version) or another store's
serving version (--reference-store, with --reference-version to pick one of its versions).
--questions and --max-new-tokens cut the work for a small machine, and the output says so;
--threads gives the scoring more torch threads when the machine is otherwise idle.
"""

from __future__ import annotations

import argparse
import math

from sisa.pipelines.common import open_store, print_json, print_table
from sisa.storage.errors import StoreError, ValidationError

from sisa import serving, tofu
from sisa.config import SisaConfig, build_config
from sisa.data import normalise, read_source, table_items
from sisa.lineage import versions


def run(cfg: SisaConfig, path: str, answer_only: bool = False) -> dict:
    source = read_source(path)
    table, problems = normalise(source, cfg)
    if problems:
        raise ValidationError("cannot evaluate:\n" + "\n".join(f"  - {p}" for p in problems))
    texts = table_items(table)
    structured = any(not isinstance(t, str) for t in texts)
    prompts = table["prompt"].to_pylist() if answer_only and "prompt" in table.column_names else None
    if answer_only and prompts is None and not structured:
        raise ValidationError(f"--answer-only needs a `prompt` column in {path}, or prompt-completion or chat records")
    v, ens = serving.load_serving(open_store(cfg), cfg)
    mixed, per = serving.score_aggregations(ens, texts, prompts)
    rows = [{"model": a, "loss": serving.mean(vals), "serving": a == ens.aggregation} for a, vals in mixed.items()]
    rows += [{"model": f"shard {s}", "loss": serving.mean(vals), "serving": False} for s, vals in sorted(per.items())]
    for r in rows:
        r["perplexity"] = math.exp(r["loss"]) if r["loss"] is not None and r["loss"] < 50 else None
    return {
        "model_version": v.model_version,
        "records": len(texts),
        "answer_only": prompts is not None or structured,
        "aggregation": ens.aggregation,
        "prior": cfg.serving.prior,
        "results": rows,
    }


def _scores(
    cfg: SisaConfig, model_version: int | None, sets: tofu.TofuSets, settings: tofu.TofuSettings
) -> tofu.TofuScores:
    store = open_store(cfg)
    v = versions.current(store) if model_version is None else versions.read(store, model_version)
    if v is None:
        raise StoreError(f"store {cfg.store.uri!r} serves no model version yet: run `sisa train` first")
    ens = serving.load_ensemble(store, cfg, versions.shard_checkpoints(v))
    return tofu.evaluate_ensemble(ens, sets, settings, v.model_version)


def run_tofu(
    cfg: SisaConfig,
    split: str,
    forget_authors: list[int] | None = None,
    model_version: int | None = None,
    reference_version: int | None = None,
    reference_store: str | None = None,
    source: str | None = None,
    settings: tofu.TofuSettings | None = None,
) -> dict:
    """TOFU's table for a version of the store (default: the serving one), with forget quality
    against the reference when one is named."""
    settings = settings or tofu.TofuSettings()
    sets = tofu.load_sets(forget_authors or tofu.forget_authors(split), settings.questions, source)
    scores = _scores(cfg, model_version, sets, settings)
    reference = None
    if reference_version is not None or reference_store is not None:
        ref_cfg = cfg
        if reference_store is not None:
            data = cfg.to_dict()
            data["store"]["uri"] = reference_store
            ref_cfg = build_config(data)
        reference = _scores(ref_cfg, reference_version, sets, settings)
    return {
        "split": split,
        "store": cfg.store.uri,
        "scores": scores.to_dict(),
        "reference": None if reference is None else {"store": reference_store or cfg.store.uri, **reference.to_dict()},
        "forget_quality": None if reference is None else tofu.forget_quality(scores, reference),
        "cuts": settings.cuts(),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", help="JSONL/CSV/Parquet records (same field mapping as ingest)")
    p.add_argument(
        "--answer-only",
        action="store_true",
        help="score only the tokens after the `prompt` column (prompt-completion and chat records always are)",
    )
    t = p.add_argument_group("TOFU (instead of --file)")
    t.add_argument(
        "--tofu",
        metavar="SPLIT",
        choices=["forget01", "forget05", "forget10"],
        help="TOFU's forget split: forget01, forget05 or forget10",
    )
    t.add_argument(
        "--forget-authors", metavar="A,B", help="the forget set's authors instead of the split's (of 180-199)"
    )
    t.add_argument("--model-version", type=int, metavar="N", help="the version to evaluate (default: the serving one)")
    t.add_argument(
        "--reference-version", type=int, metavar="N", help="the retain model: a version (of --reference-store if given)"
    )
    t.add_argument("--reference-store", metavar="URI", help="the retain model: this store's serving version")
    t.add_argument(
        "--tofu-data",
        metavar="SOURCE",
        help=f"TOFU's data: {tofu.HUB_NAME} or a folder of its files (default: shipped)",
    )
    t.add_argument(
        "--questions",
        type=int,
        metavar="K",
        help="questions of each utility set, spread evenly over it (default: all: 400 / 100 / 117)",
    )
    t.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        default=tofu.scoring.GENERATION_TOKENS,
        help=f"greedy answer length (default: open-unlearning's {tofu.scoring.GENERATION_TOKENS})",
    )
    t.add_argument(
        "--threads",
        type=int,
        metavar="N",
        default=1,
        help="torch threads while scoring (default 1, best on a shared machine; every core when it is idle)",
    )


def _authors(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValidationError(f"--forget-authors should be comma-separated author numbers, got {text!r}") from None


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    if args.tofu is not None:
        return _cli_tofu(cfg, args)
    if args.file is None:
        raise ValidationError("give --file RECORDS, or --tofu SPLIT for TOFU's table")
    res = run(cfg, args.file, args.answer_only)
    if args.json:
        print_json(res)
        return 0
    print(
        f"model version {res['model_version']}, {res['records']} "
        f"records{' (answer tokens only)' if res['answer_only'] else ''}"
    )
    rows = [{**r, "model": f"{r['model']} (serving)" if r["serving"] else r["model"]} for r in res["results"]]
    print_table(rows, ["model", "loss", "perplexity"])
    return 0


def _cli_tofu(cfg: SisaConfig, args: argparse.Namespace) -> int:
    if (args.questions is not None and args.questions < 1) or args.max_new_tokens < 1 or args.threads < 1:
        raise ValidationError("--questions, --max-new-tokens and --threads should be >= 1")
    settings = tofu.TofuSettings(max_new_tokens=args.max_new_tokens, questions=args.questions, threads=args.threads)
    res = run_tofu(
        cfg,
        args.tofu,
        _authors(args.forget_authors),
        args.model_version,
        args.reference_version,
        args.reference_store,
        args.tofu_data,
        settings,
    )
    if args.json:
        print_json(res)
        return 0
    print_tofu(res)
    return 0


def print_tofu(res: dict) -> None:
    """TOFU's table: one row per measure, the evaluated version beside the reference."""
    s, ref = res["scores"], res["reference"]
    names = ["model_utility", *tofu.UTILITY_PARTS, "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE"]

    def value(scores: dict, name: str) -> float:
        return scores["utility_parts"][name] if name in scores["utility_parts"] else scores[name]

    rows = [{"measure": n, "version": value(s, n), "reference": value(ref, n) if ref else None} for n in names]
    print(
        f"TOFU {res['split']} (forget authors {s['forget_authors']}), model version {s['model_version']}"
        + (f", reference {ref['store']} version {ref['model_version']}" if ref else "")
    )
    print_table(rows, ["measure", "version", "reference"])
    if res["forget_quality"] is not None:
        print(f"forget quality (KS p-value, forget-set truth ratios vs the reference's): {res['forget_quality']:.3g}")
    print("questions: " + ", ".join(f"{k} {v}" for k, v in s["questions"].items()))
    for cut in res["cuts"]:
        print(f"cut: {cut}")
