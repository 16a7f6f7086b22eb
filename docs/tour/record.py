"""Record the quick tour: run docs/tour/tour.sh line by line in an empty temp folder, as a user
would from the repository root, and write every command with its output to transcript.txt.

    .venv/bin/python docs/tour/record.py            # rewrites docs/tour/transcript.txt

A command that exits non-zero stops the run unless its line says `# refused` (the tour shows
refusals on purpose). tests/docs/test_tour.py records the tour again and compares it with the
committed transcript after `normalise`, which blanks only what legitimately differs between two
runs: wall times and throughputs, dates and the ids and hashes built from them or from keys; and
`differences` lets a number with decimals differ by 0.1% (another CPU rounds float32 otherwise).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = HERE / "tour.sh"
TRANSCRIPT = HERE / "transcript.txt"


def tour_lines(script: Path = SCRIPT) -> list[str]:
    """The tour's commands: every line of the script that is not a comment."""
    return [line for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]


def record(script: Path = SCRIPT) -> str:
    """Run the tour in a fresh temp folder; return the transcript (`$ command`, then its output)."""
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true")
    env.update(RAY_USAGE_STATS_ENABLED="0", DO_NOT_TRACK="1", COLUMNS="200")
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sisa-tour-") as tmp:
        work = Path(tmp)
        (work / "configs").symlink_to(REPO / "configs")
        for line in tour_lines(script):
            proc = subprocess.run(
                ["bash", "-c", line], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            if proc.returncode != 0 and "# refused" not in line:
                raise RuntimeError(f"tour command failed ({proc.returncode}): {line}\n{proc.stdout}")
            text = proc.stdout.replace(str(work.resolve()), ".").replace(str(work), ".")
            out.append(f"$ {line}")
            out.extend(text.rstrip("\n").splitlines())
            if proc.returncode != 0:
                out.append(f"(exit status {proc.returncode})")
    return "\n".join(out) + "\n"


# What differs between two runs of the same tour, and nothing else.
VARYING = [
    (re.compile(r"\b\d{8}[-T]\d{6}-[0-9a-f]{6}\b"), "<ID>"),  # request, batch and ingest ids: date + random
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(T[\d:.]+(\+00:00)?)?\b"), "<DATE>"),  # timestamps and deadlines
    (re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} "), "<DATE> "),  # MLflow's log lines
    (re.compile(r"\b\d+(\.\d+)?\s?(s|ms)\b"), "<TIME>"),  # wall times: "in 16.6s", "(0.4 s)"
    (re.compile(r"\b[0-9a-f]{16,}\b"), "<HASH>"),  # checkpoint ids' tails, digests, keyed hashes
    (re.compile(r"\d+(\.\d+)? (KiB|MiB|B)\b"), "<SIZE>"),  # bytes on disk (Parquet and MLflow metadata)
]
TIMING_COLUMNS = re.compile(r"^(\s*\d+\s+[\d,]+\s+\d+\s+[\d.]+\s+)(\d+)\s+([\d.]+)")  # train: tokens/s, wall_s


def normalise(transcript: str) -> str:
    lines = []
    for line in transcript.splitlines():
        line = TIMING_COLUMNS.sub(r"\1<N> <N>", line)
        for pattern, repl in VARYING:
            line = pattern.sub(repl, line)
        lines.append(" ".join(line.split()))  # column widths follow the values blanked above
    return "\n".join(lines)


# A number with decimals may differ in its last digit between two CPUs: the approximate fast path
# and the losses run float32 kernels whose SIMD width (AVX2, AVX-512) changes the rounding. Exact
# versions are compared bit for bit by `sisa verify --replay` in the tour itself, not here.
NUMBER = re.compile(r"-?\d+\.\d+")
RELATIVE_TOLERANCE = 1e-3


def differences(fresh: str, committed: str) -> list[str]:
    """Lines where two normalised transcripts differ. Text and integers must be equal; numbers
    with decimals may differ by RELATIVE_TOLERANCE of the committed value."""
    a, b = normalise(fresh).splitlines(), normalise(committed).splitlines()
    found = [f"{len(a)} lines today, {len(b)} committed"] if len(a) != len(b) else []
    for number, (new, old) in enumerate(zip(a, b, strict=False), start=1):
        if new == old:
            continue
        if NUMBER.split(new) == NUMBER.split(old):
            pairs = zip(NUMBER.findall(new), NUMBER.findall(old), strict=True)
            if all(abs(float(x) - float(y)) <= RELATIVE_TOLERANCE * max(abs(float(y)), 1e-9) for x, y in pairs):
                continue
        found.append(f"line {number}: today `{new}`, committed `{old}`")
    return found


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else TRANSCRIPT
    target.write_text(record())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
