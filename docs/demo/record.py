"""Record `make demo` for the docs: run the command it runs (SmolLM2-135M, one-sentence facts) from
the repository root, then write its output, abridged, with the date, the machine, the commit and the
wall time it ran with, to transcript.txt (docs/getting-started/demo.md shows it).

    .venv/bin/python docs/demo/record.py            # ~5 min on an idle 2-core CPU

The abridgement keeps every step's header and what the step says, and drops MLflow's log lines,
the examples beyond two in a row and the certificate's detail (`abridge`). tests/pipelines/test_demo.py runs the same
demo on the tiny model and checks that `shape` of its abridged output is the committed
transcript's: the steps and lines the docs show are the ones the demo prints today.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRANSCRIPT = HERE / "transcript.txt"
COMMAND = [".venv/bin/sisa", "demo", "--config", "configs/demo.yaml", "--format", "text"]  # as `make demo`
HEADER = "#"  # the transcript's own lines (date, machine) start with it; the demo's never do


def abridge(output: str) -> list[str]:
    """The demo's output without MLflow's log lines, with at most two `[...]` examples in a row, and
    of the certificate only its lineage and purge checks (`sisa certificate` prints it whole)."""
    kept: list[str] = []
    examples = 0
    in_certificate = False
    for line in output.splitlines():
        if re.match(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} ", line) or not line.strip():
            continue
        if line.startswith("deletion certificate"):
            in_certificate = True
            kept += [line, "  ..."]
            continue
        if in_certificate and line.lstrip().startswith("evidence per version"):
            in_certificate = False
        if in_certificate and not line.lstrip().startswith(("lineage check", "purged")):
            continue
        examples = examples + 1 if line.lstrip().startswith("[") else 0
        if examples <= 2:
            kept.append(line)
        elif examples == 3:
            kept.append("  ...")
    return kept


def shape(lines: list[str]) -> list[str]:
    """What two runs of the demo share whatever the model, the people and the numbers: each line's
    first three words (a step's header: all of it but the model's name), with numbers, ids and paths
    blanked; the examples (`[...]` lines) left out and repeated shapes (a table's rows) once, since
    how many there are depends on the people and S."""
    out = []
    for line in lines:
        if line.startswith(HEADER) or line.lstrip().startswith("[") or line.strip() == "...":
            continue
        if line.startswith("==="):  # a step's header, whole but for its model's name
            words = re.sub(r"\s*\(\w+\)$", " (MODEL)", line.strip("= "))
        else:
            words = " ".join(line.split()[:3])
        words = re.sub(r"\S*/\S*", "PATH", words)
        words = re.sub(r"\b(req|batch)-\d{8}-\d{6}-[0-9a-f]{6}\b", "<ID>", words)
        words = re.sub(r"\d+(\.\d+)?", "N", words)
        if not out or out[-1] != words:
            out.append(words)
    return out


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown CPU",
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def main() -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true")
    env.update(RAY_USAGE_STATS_ENABLED="0", DO_NOT_TRACK="1")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run(COMMAND, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        return proc.returncode
    header = [
        f"# {' '.join(COMMAND)}   (what `make demo` runs)",
        f"# ran {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {commit.stdout.strip()} on {_machine()}",
        f"# wall time {wall:.0f} s; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        "(other jobs shared the machine when it was above the core count)",
    ]
    output = proc.stdout.replace(f"{REPO}/", "")  # the store's paths, relative to the repository root
    TRANSCRIPT.write_text("\n".join(header + abridge(output)) + "\n")
    print(f"wrote {TRANSCRIPT} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
