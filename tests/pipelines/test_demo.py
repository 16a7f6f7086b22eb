"""`sisa demo` on the tiny model: the whole story runs, prints recall beside loss at every version
(trained, approximate, exact), writes a report that plots both, and leaves a store whose serving
version is a loadable MLflow model."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import mlflow
import pytest

from tests.helpers import TINY, run_cli

pytestmark = pytest.mark.slow


def test_the_tiny_demo_shows_recall_and_loss_at_every_version(tmp_path, monkeypatch):
    store = tmp_path / "demo"
    code, out, err = run_cli(
        "demo",
        "--config",
        TINY,
        f"store.uri={store}",
        "scheduler.backend=serial",
        "evidence.leak_k=2",
        "--people",
        "8",
        "--strangers",
        "2",
        "--format",
        "text",
    )
    assert code == 0, err
    assert "(k=2)" in out and "(k=10)" not in out  # leak@k samples `evidence.leak_k` completions
    # Recall beside loss, for the trained version and then every version the forget served.
    assert re.search(
        r"posterior\s+person to be forgotten \d+/2 recalled, loss \d+\.\d+; other trained people \d+/\d+, "
        r"loss",
        out,
    )
    for kind in ("approximate", "exact"):
        assert re.search(
            rf"v\d+ \({kind}\): forgotten person \d+/2 recalled, loss \d+\.\d+; retained \d+/\d+, loss "
            r"\d+\.\d+; strangers \d+/4, loss",
            out,
        ), kind
    assert "sisa rollback 1 → refused" in out
    # The cost table: the dearest deletion beside a typical one, both measured, and where the time went.
    assert re.search(r"dearest deletion: this person \(measured\)\s+\d+\.\d+ s \(", out)
    assert re.search(r"typical deletion: another person \(measured\)\s+\d+\.\d+ s \(", out)
    assert re.search(r"time per step\s+1\. ingest \d+ s; 2\. train \d+ s;", out)
    # The docs show SmolLM2's run of `make demo` (docs/demo/transcript.txt): the steps and lines it
    # shows are the ones the demo prints today, whatever the model and the numbers.
    recorder = _demo_recorder()
    committed = recorder.TRANSCRIPT.read_text().splitlines()
    assert recorder.shape(recorder.abridge(out)) == recorder.shape(committed), (
        "`sisa demo` prints other steps or lines than docs/demo/transcript.txt: rerun docs/demo/record.py"
    )

    reports = store / "reports"
    assert {"memorization_by_version.png", "deletion_time.png", "report.md", "report.html"} <= {
        p.name for p in reports.iterdir()
    }
    assert (reports / "memorization_by_version.png").stat().st_size > 10_000
    md = (reports / "report.md").read_text()
    rows = [line for line in md.splitlines() if re.match(r"\| v\d+ ", line)]
    assert [r.split("|")[1].strip().split(" ", 1)[1] for r in rows] == ["trained", "approximate", "exact"]
    assert all(re.search(r"\d+/\d+ recalled, loss \d+\.\d+", r) for r in rows)

    # The demo's store serves through MLflow too.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{Path(store).resolve() / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/sisa-model@serving")
    assert len(model.predict(["Ada Lane works as a"], params={"max_new_tokens": 4})) == 1


def _demo_recorder():
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("demo_record", root / "docs" / "demo" / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_fine_tunes_chat_and_scores_the_assistants_answers(tmp_path):
    """`sisa demo` (chat by default): the people are conversations; recall and loss are measured on
    the assistant's answers at every version, and the report says so (issue 15 §5). Small: one
    fact, three people."""
    store = tmp_path / "demo"
    code, out, err = run_cli(
        "demo",
        "--config",
        TINY,
        f"store.uri={store}",
        "scheduler.backend=serial",
        "tracking.enabled=false",
        "--people",
        "3",
        "--strangers",
        "1",
        "--facts",
        "1",
    )
    assert code == 0, err
    assert "fictitious people as chat records" in out and "the greedy reply starts with the assistant's answer" in out
    assert re.search(r"\[to be forgotten\] What does .+ do for a living\? → .*\(truth: .+ works as a .+\.\)", out)
    for kind in ("approximate", "exact"):
        assert re.search(
            rf"v\d+ \({kind}\): forgotten person \d+/1 recalled, loss \d+\.\d+; retained \d+/2, loss "
            r"\d+\.\d+; strangers \d+/1, loss",
            out,
        ), kind
    assert "lineage check" in out and "passed" in out
    md = (store / "reports" / "report.md").read_text()
    assert "fine-tuned as chat" in md and "the assistant's answer tokens" in md
