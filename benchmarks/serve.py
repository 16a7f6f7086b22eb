"""`sisa serve` under load: requests per second and p50/p99 latency, beside the CLI doing the same.

    .venv/bin/python benchmarks/serve.py                 # tiny config, 1, 8 and 32 clients
    .venv/bin/python benchmarks/serve.py --clients 1 8 --requests 24

Two endpoints on the tiny config, on loopback:
  POST /v1/deletion-requests   a queued request with its relief version (one record each), the
                               server's answer is the 202; baseline: `sisa forget --queue` as a
                               process per request (what a script without the service does)
  POST /v1/completions         8 new tokens; baseline: `sisa generate` as a process per prompt
Each client count runs on a fresh copy of the same trained store. Ratios first (service
throughput / CLI throughput); the machine's load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sisa import offline  # noqa: E402

offline.apply()

from sisa.data import make_people, write_jsonl  # noqa: E402

TINY = str(REPO / "configs" / "tiny.yaml")


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sisa.pipelines.cli", *argv], cwd=REPO, capture_output=True, text=True, check=True
    )


def _args(store: Path, port: int = 8750) -> list[str]:
    return [
        "--config",
        TINY,
        f"store.uri={store}",
        "scheduler.backend=serial",
        "tracking.enabled=false",
        "sharding.slice_size=8",
        f"service.port={port}",
        "store.lock_timeout_s=600",
        "service.worker_interval_s=3600",
        # Throughput, not the per-token limits (sisa/service/limits.py): one token sends every call.
        "service.rate_limit_privacy_per_min=0",
        "service.rate_limit_completions_per_min=0",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _template(work: Path, people: int) -> Path:
    store = work / "template"
    write_jsonl(make_people(people, seed=7), work / "people.jsonl")
    _cli("ingest", str(work / "people.jsonl"), *_args(store))
    _cli("train", *_args(store))
    return store


def _serve(store: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sisa.pipelines.cli", "serve", *_args(store, port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(360):
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("sisa serve did not start")


def _load(url: str, path: str, bodies: list[dict], token: str, clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    def one(body: dict) -> None:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=900)
        if r.status_code not in (200, 202):
            raise SystemExit(f"{path}: {r.status_code} {r.text[:200]}")
        latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, bodies))
    return time.perf_counter() - t0, latencies


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 2 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=32, help="requests per endpoint and client count")
    ap.add_argument("--cli-runs", type=int, default=4, help="CLI processes timed for the baseline")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sisa-bench-serve-"))
    try:
        people = max(args.requests, args.cli_runs) + 8
        template = _template(work, people)
        ids = [f"person-{i:05d}-job" for i in range(people)]
        # Baseline: the CLI, a process per request, on its own copy of the store.
        base = work / "cli"
        shutil.copytree(template, base)
        t0 = time.perf_counter()
        for rid in ids[: args.cli_runs]:
            _cli("forget", "--ids", rid, "--queue", "--no-evidence", *_args(base))
        cli_forget = args.cli_runs / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(args.cli_runs):
            _cli("generate", "--prompt", "Hello", "--max-new-tokens", "8", *_args(base))
        cli_gen = args.cli_runs / (time.perf_counter() - t0)
        rows = []
        for clients in args.clients:
            store = work / f"serve-{clients}"
            shutil.copytree(template, store)
            token = _cli("token", "create", "--role", "admin", "--name", "bench", *_args(store)).stdout.splitlines()[0]
            proc, url = _serve(store)
            try:
                wall, lat = _load(
                    url, "/v1/deletion-requests", [{"ids": [rid]} for rid in ids[: args.requests]], token, clients
                )
                rows.append(
                    (
                        "POST /v1/deletion-requests",
                        clients,
                        args.requests / wall,
                        _pct(lat, 50),
                        _pct(lat, 99),
                        args.requests / wall / cli_forget,
                    )
                )
                wall, lat = _load(
                    url, "/v1/completions", [{"prompt": "Hello", "max_tokens": 8}] * args.requests, token, clients
                )
                rows.append(
                    (
                        "POST /v1/completions",
                        clients,
                        args.requests / wall,
                        _pct(lat, 50),
                        _pct(lat, 99),
                        args.requests / wall / cli_gen,
                    )
                )
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        print(
            f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f} (2 cores); "
            f"tiny config; {args.requests} requests per row"
        )
        print(
            f"baseline: sisa forget --queue {cli_forget:.2f}/s, sisa generate {cli_gen:.2f}/s (a process per request)"
        )
        print(f"{'endpoint':<28} {'clients':>7} {'vs CLI':>7} {'req/s':>7} {'p50 s':>7} {'p99 s':>7}")
        for name, clients, rps, p50, p99, ratio in rows:
            print(f"{name:<28} {clients:>7} {ratio:>6.1f}x {rps:>7.2f} {p50:>7.3f} {p99:>7.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
