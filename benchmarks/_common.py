"""What the training and forgetting benchmarks share: the offline environment, the two models'
configs, synthetic people, shard sizes, the machine's load and a table printer.

Import this module first: it sets the environment before torch, transformers, Ray or MLflow load.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sisa import offline  # noqa: E402  (light: sets the environment before heavy imports)

offline.apply()

# transformers deprecations that peft triggers on every adapter; they bury the tables.
warnings.filterwarnings("ignore", category=FutureWarning)

from sisa.pipelines.common import print_table  # noqa: E402

from sisa.config import SisaConfig, build_config, load_config  # noqa: E402
from sisa.data import (  # noqa: E402
    assign_shards,  # noqa: E402
    make_people,
    write_jsonl,
)

CPUS = os.cpu_count() or 1

# Per model: the shipped config and what the benchmarks change in it. SmolLM2 keeps the demo's
# LoRA (r=16 on every linear projection) but trains short records, few epochs, so a run takes
# minutes; the tiny model keeps configs/tiny.yaml.
MODELS = {
    "tiny": ("configs/tiny.yaml", []),
    "smollm2": ("configs/demo.yaml", ["training.max_length=32", f"model.cache_dir={REPO / '.cache' / 'models'}"]),
}

# A few hundred short records keep SmolLM2 to minutes; the tiny model needs more for its training,
# not the fixed costs of a job (process, base model, checkpoints), to dominate.
DEFAULT_RECORDS = {"tiny": 1200, "smollm2": 300}


def model_config(model: str, store_uri: str, overrides: list[str]) -> SisaConfig:
    path, own = MODELS[model]
    return load_config(REPO / path, [f"store.uri={store_uri}", *own, *overrides])


def with_store(cfg: SisaConfig, store_uri: str) -> SisaConfig:
    """The same config pointing at another store."""
    data = cfg.to_dict()
    data["store"]["uri"] = store_uri
    return build_config(data)


def people(records: int, facts: int = 2, seed: int = 0) -> list[dict]:
    """`records` one-sentence facts about ceil(records / facts) fictitious people (cut to size)."""
    return make_people(math.ceil(records / facts), seed=seed, facts_per_person=facts)[:records]


def write_people(rows: list[dict], folder: str) -> str:
    return str(write_jsonl(rows, Path(folder) / "people.jsonl"))


def shard_sizes(rows: list[dict], num_shards: int, seed: int) -> list[int]:
    """Records per shard as ingest will assign them (by subject), before anything is written."""
    ids = [r["record_id"] for r in rows]
    subjects = [r.get("subject_id") for r in rows]
    shards = assign_shards(seed, ids, subjects, num_shards)
    return [int((shards == s).sum()) for s in range(num_shards)]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {CPUS} CPUs"


@contextmanager
def timer() -> Iterator[list[float]]:
    """`with timer() as t: ...` then `t[0]` is the elapsed wall time in seconds."""
    out = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(rows: list[dict], columns: list[str]) -> None:
    print_table(rows, columns)
    sys.stdout.flush()


def parse_args(description: str, repeat_help: str, extra=None):
    """The flags both model benchmarks take; `extra(parser)` adds a script's own."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", choices=["tiny", "smollm2", "both"], default="both")
    p.add_argument(
        "--records", type=int, default=None, help="records, two facts per person (default: tiny 1200, SmolLM2 300)"
    )
    p.add_argument("--shards", type=int, default=CPUS, help="S (default: one per CPU)")
    p.add_argument("--slices", type=int, default=4, help="R: slices in the largest shard")
    p.add_argument("--epochs", type=int, default=None, help="training.epochs (default: tiny.yaml's 1; SmolLM2 1)")
    p.add_argument("--repeat", type=int, default=0, help=repeat_help)
    if extra is not None:
        extra(p)
    return p.parse_args()


def run_models(bench_model, report, args) -> None:
    """Benchmark each chosen model, print the report and the wall time."""
    models = ["tiny", "smollm2"] if args.model == "both" else [args.model]
    started = time.perf_counter()
    results = [bench_model(m, args) for m in models]
    report(results, args)
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
