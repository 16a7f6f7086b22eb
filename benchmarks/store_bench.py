"""Storage benchmark: ingest 1M records, then look up 10k ids among them; ours beside pandas.

    .venv/bin/python -m benchmarks.store_bench                     # 1M records, 10k lookups (~2 min here)
    .venv/bin/python -m benchmarks.store_bench --records 100000

Run it from the repository root: `-m` puts the root first on sys.path, so this checkout's
`storage`, `sisa` and `pipelines` are measured whichever environment's python runs it.

Both sides do the same work on the same JSONL file (record_id, subject_id, ~300 bytes of text):
  ours    `pipelines.ingest.run`: read, validate (ids, text, duplicates), content_sha256, keyed
          shard by subject, slices of 4096 in arrival order, a Parquet part per (shard, slice),
          the record index, the ledger entry.
  pandas  the obvious way: `pd.read_json(lines=True)`, the same checks, sha256 and keyed blake2b
          per row with `.map`, `groupby(shard).cumcount()` for slices, `to_parquet` per
          (shard, slice), an index DataFrame written with `to_parquet`. In chunks of 1M lines
          (`chunksize`): one chunk at 1M, ten at 10M, which would not fit in memory at once.
Lookup: 10k ids (1% of them unknown) against the 1M-row index.
  ours    `store.index.lookup(ids)` on the loaded index (load time reported separately). The
          first lookup is one pass over the index; the second builds the sorted id hashes that
          the later ones use (their best is the lookup figure).
  pandas  read the index parts with `pd.read_parquet`, `concat`, `isin` + the missing ids.
Targets (issue 2): ingest at least as fast as pandas; a 10k lookup in under 50 ms.
Issue 14 §6: the same at 10M records (`--records 10000000`) within this machine's memory.

Every ingest and each side's index load + lookups run in a fresh Python process, so each peak
RSS printed is that side's own (it includes ~the libraries both sides import), not the
high-water mark of whatever ran earlier in one long process.

This machine is shared (2 cores), so every timing is the best of a few runs, ours and pandas
interleaved: the best run is the one least disturbed by other work, for both sides alike.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from sisa.pipelines.ingest import run as ingest
from sisa.storage.store import Store

from sisa.config import build_config
from sisa.data import shard_key

NUM_SHARDS = 8
SLICE_SIZE = 4096
PANDAS_CHUNK = 1_000_000
WORDS = [
    "customer",
    "called",
    "about",
    "the",
    "invoice",
    "refund",
    "delivery",
    "account",
    "password",
    "order",
    "ticket",
    "agent",
    "replied",
    "escalated",
    "resolved",
    "warranty",
    "shipment",
    "address",
    "payment",
    "card",
    "subscription",
    "renewal",
    "complaint",
    "feedback",
    "manager",
    "discount",
    "voucher",
    "credit",
    "balance",
    "overdue",
    "reminder",
    "contract",
]


def write_records(path: Path, n: int) -> int:
    """A deterministic JSONL file of `n` records, ~300 bytes of text each; returns its size."""
    rng = random.Random(0)
    fillers = []
    for _ in range(997):
        words = []
        while sum(len(w) + 1 for w in words) < 250:
            words.append(rng.choice(WORDS))
        fillers.append(" ".join(words))
    with path.open("w") as f:
        for start in range(0, n, 100_000):
            f.write(
                "".join(
                    f'{{"record_id": "rec-{i:07d}", "subject_id": "subj-{i // 4:07d}", '
                    f'"text": "Ticket {i} from subject {i // 4}: {fillers[(i * 7919) % 997]}."}}\n'
                    for i in range(start, min(n, start + 100_000))
                )
            )
    return path.stat().st_size


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measured(fn: Callable[..., Any], *args: Any) -> tuple[Any, int, int]:
    base = _rss_now()
    result = fn(*args)
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, base


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> tuple[Any, int, int]:
    """fn(*args) in a new Python process: (its result, its peak RSS, its RSS before fn ran)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measured, fn, *args).result()


# -- ours -----------------------------------------------------------------------------------------
def ingest_ours(path: Path, uri: str) -> float:
    cfg = build_config(
        {
            "store": {"uri": uri},
            "sharding": {"num_shards": NUM_SHARDS, "slice_size": SLICE_SIZE},
            "tracking": {"enabled": False},
        }
    )
    t = time.perf_counter()
    (result,) = ingest(cfg, [str(path)])
    elapsed = time.perf_counter() - t
    assert not result.noop and result.records > 0
    return elapsed


def lookup_ours(uri: str, ids: list[str], repeats: int) -> tuple[float, list[float], int, dict]:
    """(index load s, each lookup's s, ids found, records per (shard, slice)).

    The first lookup is one pass over the index; the second builds the id hashes; the rest use them.
    """
    store = Store.open(uri)
    t = time.perf_counter()
    index = store.index
    load = time.perf_counter() - t
    query = pa.array(ids, pa.string())
    times, found_n = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        found, missing = index.lookup(query)
        times.append(time.perf_counter() - t)
        found_n = found.num_rows
        assert found_n + len(missing) == len(set(ids))
    counts = {(r["shard_id"], r["slice_idx"]): r["records"] for r in index.counts().to_pylist()}
    return load, times, found_n, counts


# -- pandas, the obvious way ----------------------------------------------------------------------
def ingest_pandas(path: Path, out: Path, seed: int = 0) -> tuple[float, dict]:
    """The obvious pandas way, one chunk of `PANDAS_CHUNK` lines at a time (a single chunk up to
    1M records): all of 10M records at once would not fit in this machine's memory. Slices
    continue across chunks (records per shard so far); duplicate ids are checked over the whole
    index at the end."""
    t = time.perf_counter()
    key = shard_key(seed)
    filled = pd.Series(0, index=range(NUM_SHARDS))  # records per shard so far
    now = pd.Timestamp.now(tz="UTC")
    index_parts, counts = [], {}
    with pd.read_json(
        path, lines=True, dtype={"record_id": str, "subject_id": str, "text": str}, chunksize=PANDAS_CHUNK
    ) as reader:
        for part, df in enumerate(reader, start=1):
            ids = df["record_id"]
            bad = ids.isna() | (ids.str.strip() == "") | df["text"].isna() | (df["text"].str.strip() == "")
            if bad.any():
                raise ValueError("bad rows")
            subject = df["subject_id"].where(df["subject_id"].notna() & (df["subject_id"] != ""), ids)
            df["shard_id"] = subject.map(
                lambda s: (
                    int.from_bytes(hashlib.blake2b(s.encode(), key=key, digest_size=8).digest(), "big") % NUM_SHARDS
                )
            ).astype("int32")
            df["slice_idx"] = ((df.groupby("shard_id").cumcount() + df["shard_id"].map(filled)) // SLICE_SIZE).astype(
                "int32"
            )
            filled = filled.add(df["shard_id"].value_counts(), fill_value=0).astype("int64")
            df["source"] = path.name
            df["ingest_id"] = "pandas"
            df["ingested_at"] = now
            df["content_sha256"] = df["text"].map(lambda s: hashlib.sha256(s.encode()).hexdigest())
            for (shard, sl), group in df.groupby(["shard_id", "slice_idx"], sort=True):
                folder = out / "data" / f"shard={shard:05d}" / f"slice={sl:06d}"
                folder.mkdir(parents=True, exist_ok=True)
                group.to_parquet(folder / f"part-{part:06d}-pandas.parquet", index=False)
                counts[(shard, sl)] = counts.get((shard, sl), 0) + len(group)
            index_parts.append(
                df[
                    ["record_id", "subject_id", "shard_id", "slice_idx", "source", "ingest_id", "content_sha256"]
                ].assign(status="live")
            )
            del df, ids, bad, subject
    index = pd.concat(index_parts, ignore_index=True)
    if index["record_id"].duplicated().any():
        raise ValueError("duplicate ids")
    (out / "index").mkdir(parents=True, exist_ok=True)
    index.to_parquet(out / "index" / "part-000001-pandas.parquet", index=False)
    elapsed = time.perf_counter() - t
    return elapsed, {(int(sh), int(sl)): n for (sh, sl), n in counts.items()}


def lookup_pandas(index_dir: Path, ids: list[str], repeats: int) -> tuple[float, list[float], int]:
    t = time.perf_counter()
    index = pd.concat([pd.read_parquet(p) for p in sorted(index_dir.glob("*.parquet"))], ignore_index=True)
    load = time.perf_counter() - t
    times, found_n = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        found = index[index["record_id"].isin(ids)]
        missing = set(ids) - set(found["record_id"])
        times.append(time.perf_counter() - t)
        found_n = len(found)
        assert found_n + len(missing) == len(set(ids))
    return load, times, found_n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=10_000)
    ap.add_argument("--ingest-runs", type=int, default=3, help="each ingest runs this many times; the best is shown")
    ap.add_argument(
        "--repeats",
        type=int,
        default=9,
        help="lookups are timed this many times; the best is shown (ours: of those after the first two)",
    )
    ap.add_argument("--tmp", help="folder for the input and the stores (default: the system's temp folder)")
    args = ap.parse_args()
    n = args.records

    with tempfile.TemporaryDirectory(prefix="sisa-bench-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        path = tmp / "records.jsonl"
        t = time.perf_counter()
        size = write_records(path, n)
        print(
            f"wrote {n:,} records ({size / 1e6:.0f} MB, {size / n:.0f} B/record) in {time.perf_counter() - t:.1f}s",
            flush=True,
        )

        ours_runs, pandas_runs, ours_rss, pandas_rss = [], [], [], []
        for run in range(args.ingest_runs):
            last = run == args.ingest_runs - 1
            uri = str(tmp / f"store-{run}")
            t, rss, base = in_fresh_process(ingest_ours, path, uri)
            ours_runs.append(t)
            ours_rss.append(rss)
            print(
                f"ours    ingest {t:6.1f}s  {n / t:>10,.0f} records/s  peak RSS {gib(rss)} (libraries {gib(base)})",
                flush=True,
            )
            (t, pandas_counts), rss, base = in_fresh_process(ingest_pandas, path, tmp / f"pandas-{run}")
            pandas_runs.append(t)
            pandas_rss.append(rss)
            print(
                f"pandas  ingest {t:6.1f}s  {n / t:>10,.0f} records/s  peak RSS {gib(rss)} (libraries {gib(base)})",
                flush=True,
            )
            if not last:  # keep the disk small: only the last run's outputs are looked up
                shutil.rmtree(uri)
                shutil.rmtree(tmp / f"pandas-{run}")
        ours_s, pandas_s = min(ours_runs), min(pandas_runs)

        rng = random.Random(1)
        known = [f"rec-{i:07d}" for i in rng.sample(range(n), args.lookups - args.lookups // 100)]
        ids = known + [f"unknown-{i}" for i in range(args.lookups // 100)]
        rng.shuffle(ids)
        (ours_load, ours_times, ours_found, ours_counts), ours_lookup_rss, _ = in_fresh_process(
            lookup_ours, uri, ids, args.repeats
        )
        (pd_load, pd_times, pd_found), pd_lookup_rss, _ = in_fresh_process(
            lookup_pandas, Path(uri) / "index", ids, args.repeats
        )
        # Same work: both put the same number of records in every (shard, slice).
        assert ours_counts == pandas_counts, "ours and pandas placed records differently"
        assert ours_found == pd_found == len(known)
        os.remove(path)

    ours_lookup, pd_lookup = min(ours_times[2:] or ours_times), min(pd_times)
    ingest_ratio = pandas_s / ours_s
    lookup_ratio = pd_lookup / ours_lookup
    total_ratio = (pd_load + pd_times[0]) / (ours_load + ours_times[0])
    rows = [
        ("ingest throughput, ours / pandas", f"{ingest_ratio:.2f}x", "target >= 1.00x", ingest_ratio >= 1.0),
        (f"lookup {args.lookups:,} ids, pandas / ours", f"{lookup_ratio:.1f}x", "", None),
        ("index load + first lookup, pandas / ours", f"{total_ratio:.2f}x", "a one-off question", None),
        ("ingest peak RSS, pandas / ours", f"{max(pandas_rss) / max(ours_rss):.2f}x", "", None),
        ("ingest ours", f"{n / ours_s:,.0f} rec/s", f"{ours_s:.1f} s (best of {args.ingest_runs})", None),
        ("ingest pandas", f"{n / pandas_s:,.0f} rec/s", f"{pandas_s:.1f} s (best of {args.ingest_runs})", None),
        (
            f"lookup ours ({args.lookups:,} of {n:,})",
            f"{ours_lookup * 1e3:.1f} ms",
            f"best of {max(1, args.repeats - 2)} after the first two; target < 50 ms",
            ours_lookup < 0.05,
        ),
        (f"lookup pandas ({args.lookups:,} of {n:,})", f"{pd_lookup * 1e3:.1f} ms", f"best of {args.repeats}", None),
        ("first lookup ours", f"{ours_times[0] * 1e3:.1f} ms", "one pass over the index", None),
        (
            "second lookup ours",
            f"{ours_times[1] * 1e3:.0f} ms" if len(ours_times) > 1 else "-",
            "builds the id hashes (index >= 16x the ids)",
            None,
        ),
        ("first lookup pandas", f"{pd_times[0] * 1e3:.1f} ms", "", None),
        ("index load ours", f"{ours_load * 1e3:.0f} ms", "", None),
        ("index load pandas", f"{pd_load * 1e3:.0f} ms", "", None),
        ("peak RSS ingest ours", gib(max(ours_rss)), "highest of the runs", None),
        ("peak RSS ingest pandas", gib(max(pandas_rss)), "highest of the runs", None),
        ("peak RSS index load + lookups ours", gib(ours_lookup_rss), "", None),
        ("peak RSS index load + lookups pandas", gib(pd_lookup_rss), "", None),
    ]
    print(
        f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (other work on this machine "
        "slows both sides)"
    )
    w = max(len(r[0]) for r in rows)
    for name, value, note, ok in rows:
        mark = "" if ok is None else ("  ok" if ok else "  MISSED")
        print(f"{name:<{w}}  {value:>14}  {note}{mark}")


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


if __name__ == "__main__":
    main()
