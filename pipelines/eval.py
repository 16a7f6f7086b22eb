"""Evaluate the serving model version on a file of records: loss and perplexity.

    sisa eval --config configs/tiny.yaml --file heldout.jsonl [--json]

Reports both aggregations of the shards, the posterior mixture and the uniform mean (the one
`serving.aggregation` serves is marked), beside each shard alone. When the records have a
`prompt` column (as `sisa synth` writes), --answer-only scores just the tokens after the prompt.
Prompt-completion and chat records (the ingest formats) are always scored on their completion /
assistant tokens, chat rendered with the base model's chat template as in training.
"""

from __future__ import annotations

import argparse
import math

from sisa.pipelines.common import open_store, print_json, print_table
from sisa.storage.errors import ValidationError

from sisa import serving
from sisa.config import SisaConfig
from sisa.data import normalise, read_source, table_items


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
    mixed, per = serving.score_aggregations(ens, texts, prompts, cfg.training.max_length)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", required=True, help="JSONL/CSV/Parquet records (same field mapping as ingest)")
    p.add_argument(
        "--answer-only",
        action="store_true",
        help="score only the tokens after the `prompt` column (prompt-completion and chat records always are)",
    )


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
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
