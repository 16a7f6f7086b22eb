"""A GPU run: train in bf16 with one GPU per shard job, forget one subject, check lineage, compare
tokens/s with the same work on CPU, and report whether `verify --replay` is bit-exact under
deterministic CUDA settings.

    .venv/bin/python benchmarks/gpu.py                      # tiny, then SmolLM2
    .venv/bin/python benchmarks/gpu.py --model tiny --records 400
    .venv/bin/python benchmarks/gpu.py --model smollm2 --vllm  # and the serving engines, vLLM's route too

Without CUDA it says so and exits 0 (there is nothing to measure).

Per model, two stores get the same records:
  cuda  scheduler.backend=ray, model.device=cuda, model.dtype=bfloat16: every shard job asks Ray
        for one GPU (sisa/training/scheduler.py), so S jobs share the machine's GPUs one each.
        CUBLAS_WORKSPACE_CONFIG=:4096:8 is set before torch loads and the trainer turns on
        torch.use_deterministic_algorithms (warn_only: an op without a deterministic kernel
        warns in the worker's log instead of failing; the replay below is the measurement).
  cpu   the same config with model.device=cpu, dtype float32 (what a CPU trains in), the serial
        backend with every core in one job: the tokens/s a GPU-less machine gets.
Then on the cuda store: forget the first subject (exact), check that no serving checkpoint's
lineage holds its records, that rollback to version 1 is refused, and `verify --replay`: each
affected shard retrained from scratch on the GPU, compared with torch.equal.

With `--vllm`: benchmarks/engine.py on SmolLM2 on the GPU, bf16: sisa's loop, its batcher, the
top-1 batcher and the vLLM route (`serving.engine: vllm`) at 1, 8 and 32 clients, with recall.
It needs a CUDA build of vLLM in .venv-vllm (`python3 -m venv .venv-vllm && .venv-vllm/bin/pip
install vllm==0.32.0`; `make vllm` installs the CPU build).
"""

from __future__ import annotations

import os

# Before torch loads (and so before _common): cuBLAS is deterministic only with a fixed
# workspace, and Ray workers inherit this environment from the driver.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import _common as C  # noqa: E402  (sets the offline environment before torch, Ray and MLflow load)
import torch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["tiny", "smollm2", "both"], default="both")
    p.add_argument(
        "--records", type=int, default=None, help="records, two facts per person (default: tiny 1200, SmolLM2 300)"
    )
    p.add_argument("--shards", type=int, default=None, help="S (default: one per GPU, at least 2)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--skip-cpu", action="store_true", help="no CPU comparison (SmolLM2 on CPU takes minutes)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument("--vllm", action="store_true", help="also benchmarks/engine.py's engines, vLLM's route included")
    return p.parse_args(argv)


def overrides(device: str, shards: int, args: argparse.Namespace, model: str) -> list[str]:
    out = [
        f"sharding.num_shards={shards}",
        "sharding.slice_size=64",
        f"training.epochs={args.epochs}",
        "tracking.enabled=false",
        "deletion.relief=false",
        f"model.device={device}",
    ]
    if model == "smollm2":
        out.append("sharding.slice_mode=incremental")
    if device == "cuda":
        out += ["model.dtype=bfloat16", "scheduler.backend=ray", "scheduler.threads_per_task=1"]
    else:
        out += ["model.dtype=float32", "scheduler.backend=serial", f"scheduler.threads_per_task={C.CPUS}"]
    return out


def train_store(model: str, device: str, shards: int, rows: list[dict], args, root: str) -> tuple[object, dict]:
    from sisa.pipelines.ingest import run as ingest_run
    from sisa.pipelines.train import run as train_run

    from sisa.training import scheduler

    cfg = C.model_config(model, os.path.join(root, f"{model}-{device}"), overrides(device, shards, args, model))
    ingest_run(cfg, [C.write_people(rows, root)])
    scheduler.prepare(cfg.scheduler)
    with C.timer() as t:
        res = train_run(cfg)
    tokens = sum(r.tokens for r in res.trained)
    longest = max(r.wall_s for r in res.trained)
    return cfg, {
        "device": device,
        "dtype": "bfloat16" if device == "cuda" else "float32",
        "shards": shards,
        "tokens": tokens,
        "train_s": t[0],
        "tokens_per_s": tokens / t[0] if t[0] else 0.0,
        "longest_job_s": longest,
        "nodes": sorted({r.node for r in res.trained}),
    }


def forget_and_verify(cfg, rows: list[dict]) -> dict:
    from sisa.pipelines import forget, rollback
    from sisa.pipelines import verify as verify_pipeline
    from sisa.storage.errors import RefusedError

    subject = rows[0]["subject_id"]
    with C.timer() as t:
        req = forget.run(cfg, "subject", [subject], quiet=True)["request"]
    try:
        rollback.run(cfg, 1)
        refused = False
    except RefusedError:
        refused = True
    with C.timer() as tv:
        report = verify_pipeline.run(cfg, req["request_id"], True)
    return {
        "forget_s": t[0],
        "affected_shards": [s["shard_id"] for s in req["plan"]["shards"]],
        "lineage_clean": not report["lineage_violations"],
        "rollback_refused": refused,
        "replay": {k: v["identical"] for k, v in report["replay"].items()},
        "replay_bit_exact": all(v["identical"] for v in report["replay"].values()),
        "verify_s": tv[0],
    }


def bench_model(model: str, args, gpus: int) -> dict:
    from sisa.training import scheduler

    shards = args.shards or max(2, gpus)
    records = args.records or C.DEFAULT_RECORDS[model]
    rows = C.people(records, seed=7)
    root = tempfile.mkdtemp(prefix=f"sisa-gpu-{model}-")
    try:
        cfg, cuda = train_store(model, "cuda", shards, rows, args, root)
        checks = forget_and_verify(cfg, rows)
        scheduler.shutdown_ray()
        cpu = None if args.skip_cpu else train_store(model, "cpu", shards, rows, args, root)[1]
    finally:
        scheduler.shutdown_ray()
        shutil.rmtree(root, ignore_errors=True)
    return {"model": model, "records": records, "cuda": cuda, "cpu": cpu, **checks}


def report(results: list[dict], args) -> None:
    rows = []
    for r in results:
        for side in ("cuda", "cpu"):
            m = r[side]
            if m is None:
                continue
            speedup = m["tokens_per_s"] / r["cpu"]["tokens_per_s"] if side == "cuda" and r["cpu"] else None
            rows.append(
                {
                    "model": r["model"],
                    "device": side,
                    "dtype": m["dtype"],
                    "shards": m["shards"],
                    "tokens": m["tokens"],
                    "train s": C.fmt_s(m["train_s"]),
                    "tokens/s": f"{m['tokens_per_s']:.0f}",
                    "vs cpu": C.fmt_ratio(speedup),
                }
            )
    C.table(rows, ["model", "device", "dtype", "shards", "tokens", "train s", "tokens/s", "vs cpu"])
    print()
    checks = [
        {
            "model": r["model"],
            "forget s": C.fmt_s(r["forget_s"]),
            "affected": ",".join(map(str, r["affected_shards"])),
            "lineage": "clean" if r["lineage_clean"] else "VIOLATED",
            "rollback": "refused" if r["rollback_refused"] else "ALLOWED",
            "replay": "bit-exact" if r["replay_bit_exact"] else "DIFFERS",
            "verify s": C.fmt_s(r["verify_s"]),
        }
        for r in results
    ]
    C.table(checks, ["model", "forget s", "affected", "lineage", "rollback", "replay", "verify s"])
    if args.json:
        print(json.dumps(results, indent=2))


def serve_engines() -> None:
    """benchmarks/engine.py with the vLLM route, on this GPU in bf16 (its own process: vLLM takes
    the GPU memory it is given, and the training above has let go of its share)."""
    import subprocess

    cmd = [sys.executable, str(C.REPO / "benchmarks" / "engine.py"), "--model", "smollm2", "--people", "24"]
    cmd += ["--shards", "4", "--tokens", "32", "--vllm", "--vllm-dtype", "bfloat16"]
    print("\n$ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "no CUDA device here (torch.cuda.is_available() is False): benchmarks/gpu.py measures a GPU run; nothing "
            "to do"
        )
        return 0
    gpus = torch.cuda.device_count()
    print(
        f"{gpus} CUDA device(s): {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}; "
        f"CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}; {C.load()}"
    )
    models = ["tiny", "smollm2"] if args.model == "both" else [args.model]
    started = time.perf_counter()
    results = [bench_model(m, args, gpus) for m in models]
    report(results, args)
    if args.vllm:
        serve_engines()
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")
    return 0 if all(r["lineage_clean"] and r["rollback_refused"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
