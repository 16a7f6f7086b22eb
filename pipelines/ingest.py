"""Ingest records into a store.

    sisa ingest people.jsonl more.csv --config configs/tiny.yaml store.uri=/tmp/s

1. Read every input (JSONL, CSV, Parquet, HF dataset folder) into Arrow.
2. Validate the whole batch: ids, text, duplicates within, across inputs and against the store.
   Any problem: one error naming the lines/ids, nothing written. Records are plain `text`,
   `prompt` + `completion`, or chat `messages` (a list of {role, content} turns: system, user,
   assistant), told apart by their columns (or --format); see sisa/data/formats.py.
3. Under the store lock: add provenance, assign shards (by subject) and slices (arrival order),
   write Parquet parts and index rows, then the ingest ledger entry that commits them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sisa.pipelines.common import print_json, print_table

from sisa.api import SisaStore
from sisa.config import SisaConfig
from sisa.data import IngestResult, Source


def run(cfg: SisaConfig, inputs: list[str | Source]) -> list[IngestResult]:
    # 1. read; 2. validate everything; 3. write one ingest per input (SisaStore.ingest)
    return SisaStore(cfg).ingest(*inputs)


def ingest_table(cfg: SisaConfig, data: Any, name: str = "table") -> IngestResult:
    """A `pyarrow.Table` or a `datasets.Dataset` (`SisaStore.ingest` takes them too)."""
    return SisaStore(cfg).ingest(data, name=name)[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="FILE", help="JSONL, CSV, Parquet files or HF `save_to_disk` folders")
    p.add_argument("--id-field", help="input column with the record id (default: ingest.id_field = record_id)")
    p.add_argument("--text-field", help="input column with the text (default: ingest.text_field = text)")
    p.add_argument(
        "--subject-field", help="input column with the data subject (default: ingest.subject_field = subject_id)"
    )
    p.add_argument("--source", help="provenance `source` to record (default: the input file name)")
    p.add_argument(
        "--format",
        choices=["auto", "text", "prompt-completion", "chat"],
        help="record format (default: ingest.format = auto: a `messages` column is chat, `prompt` + `completion` "
        "columns are prompt-completion, else the text field)",
    )


def overrides_from(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, key in (
        ("id_field", "ingest.id_field"),
        ("text_field", "ingest.text_field"),
        ("subject_field", "ingest.subject_field"),
        ("source", "ingest.source"),
        ("format", "ingest.format"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    results = run(cfg, list(args.inputs))
    if args.json:
        print_json([r.to_dict() for r in results])
        return 0
    for r in results:
        if r.noop:
            print(f"{r.source}: nothing new ({r.skipped} record(s) already in the store with identical text); no-op")
        else:
            extra = f", {r.skipped} already present" if r.skipped else ""
            kind = f"{r.record_format} " if r.record_format and r.record_format != "text" else ""
            print(f"{r.source}: ingested {r.records} {kind}record(s) as ingest {r.ingest_id}{extra}")
            rows = [{"shard_id": k, "records": v} for k, v in sorted(r.shards.items())]
            print_table(rows, ["shard_id", "records"])
    sys.stdout.flush()
    return 0
