"""The docs' `make demo` transcript says when, where and at which commit it ran, and shows every
step of the story (tests/pipelines/test_demo.py checks the steps and lines are today's)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _recorder():
    spec = importlib.util.spec_from_file_location("demo_record", ROOT / "docs" / "demo" / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_transcript_names_its_run_and_shows_every_step() -> None:
    demo = _recorder()
    lines = demo.TRANSCRIPT.read_text().splitlines()
    header = [line for line in lines if line.startswith(demo.HEADER)]
    assert re.search(r"ran \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC at commit [0-9a-f]{7,} on .+, \d+ cores", header[1])
    assert re.search(r"wall time \d+ s", header[2])
    steps = [int(m.group(1)) for line in lines if (m := re.match(r"^=== (\d)\. ", line))]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "(smollm2)" in next(line for line in lines if line.startswith("=== 2. "))


def test_abridge_keeps_the_story_and_drops_the_detail() -> None:
    demo = _recorder()
    output = "\n".join(
        [
            "2026/12/07 03:34:53 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
            "=== 3. what the model remembers ===",
            *[f"  [stranger] Person {i} works as a → x   (truth: y.)" for i in range(4)],
            "deletion certificate — request req-20261207-033603-d5d842",
            "  request sha256    37deb1c706b1e0d60ab0a9311ebc90db4605bd46e7aa47c967450c8c20d33e75",
            "  lineage check     PASSED: no serving checkpoint's lineage holds a deleted id hash",
            "  evidence per version (greedy recall of answers)",
        ]
    )
    kept = demo.abridge(output)
    assert kept[0] == "=== 3. what the model remembers ==="
    assert sum(line.lstrip().startswith("[stranger]") for line in kept) == 2 and "  ..." in kept
    assert not any("mlflow.store" in line or "request sha256" in line for line in kept)
    assert any("lineage check" in line for line in kept) and kept[-1].lstrip().startswith("evidence per version")
    # Two runs with other numbers, people and shard counts have one shape; another step does not.
    other = output.replace("=== 3.", "=== 4.").replace("d5d842", "0a0b0c")
    assert demo.shape(demo.abridge(output)) == demo.shape(demo.abridge(output.replace("Person 1", "Someone 9")))
    assert demo.shape(demo.abridge(output)) != demo.shape(demo.abridge(other.replace("remembers", "forgets")))
