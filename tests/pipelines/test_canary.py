"""Nothing left behind (README, "Guarantees and their limits"): the bug we fear most.

A unique canary string is planted in every field of one record (its text; a chat record's
system, user and assistant turns; a prompt-completion record's prompt and completion), another one
in that record's own metadata column; the record also has a unique id and subject. The store is trained with real
MLflow tracking, then the record is forgotten (exactly on Ray, and with the --fast path). Before
the forget the scan must find the canary (so the scan can fail); after it, nothing may hold any
of the four strings: the raw bytes of every file under the store, every value of every column of
every Parquet file, every JSON/text file, every row of every table of the MLflow sqlite database,
every MLflow artifact, the files created in the system temp dir (and Ray's session dir) during
the test, and everything the CLI printed.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import pytest
from sisa.storage import ledgers
from sisa.storage.store import Store

from sisa.data.synthetic import make_people, write_jsonl
from sisa.data.synthetic_formats import as_format
from sisa.lineage import versions
from sisa.training import scheduler
from tests.helpers import RecordingCli, canaries_in_text, cli_args, find_canaries

HARNESS = ("bash_jobs", "bash_tool_")  # the machinery running this session, not sisa's files


# -- where to look ---------------------------------------------------------------------------------------
def temp_files() -> dict[str, int]:
    """Regular files under the system temp dir with their mtime (harness folders left out)."""
    out = {}
    for d, dirs, names in os.walk(tempfile.gettempdir()):
        dirs[:] = [x for x in dirs if not x.startswith(HARNESS)]
        for n in names:
            p = os.path.join(d, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if os.path.isfile(p) and not os.path.islink(p):
                out[p] = st.st_mtime_ns
    return out


def new_temp_files(before: dict[str, int], exclude: Path) -> list[Path]:
    """Files created or rewritten in the temp dir (and Ray's session dir) since `before`."""
    now = temp_files()
    ray_dir = scheduler.ray_temp_dir()
    if ray_dir and os.path.isdir(ray_dir):
        for d, _, names in os.walk(ray_dir):
            for n in names:
                p = os.path.join(d, n)
                if os.path.isfile(p):
                    now.setdefault(p, -1)
    return [Path(p) for p, m in sorted(now.items()) if before.get(p) != m and not p.startswith(str(exclude) + os.sep)]


def mlflow_artifact_dirs(store_dir: Path) -> list[Path]:
    """Artifact locations MLflow knows for its experiments (the store's own by default)."""
    from sisa.serving.tracking import MlflowClient  # MLflow lives behind sisa.serving.tracking

    client = MlflowClient(tracking_uri=f"sqlite:///{store_dir / 'mlflow.db'}")
    out = []
    for exp in client.search_experiments():
        loc = exp.artifact_location
        if loc.startswith("file://"):
            out.append(Path(loc[len("file://") :]))
        elif loc and "://" not in loc:
            out.append(Path(loc))
    return out


def _serving_checkpoints(store_dir: Path) -> list[str]:
    return sorted(versions.current(Store.open(str(store_dir))).shards.values())


# -- the test -------------------------------------------------------------------------------------------
def canary_record(record_format: str, record_id: str, subject_id: str, meta: str) -> tuple[dict, dict[str, str]]:
    """One record of `record_format` with a canary in every field it can carry, and the needles."""
    c = {k: uuid.uuid4().hex for k in ("text", "system", "user", "prompt")}
    base = {"record_id": record_id, "subject_id": subject_id, "fact": "vault", "note": f"escalation ref CANARY-{meta}"}
    prompt, answer = "Zed Quill's vault code is", f" CANARY-{c['text'].upper()}."
    if record_format == "chat":
        turns = [
            {"role": "system", "content": f"Desk note CANARY-{c['system']}"},
            {"role": "user", "content": f"What is the vault code of ref CANARY-{c['user']}?"},
            {"role": "assistant", "content": prompt + answer},
        ]
        return {**base, "messages": turns}, {
            "canary assistant": c["text"],
            "canary system": c["system"],
            "canary user": c["user"],
        }
    if record_format == "prompt-completion":
        return {**base, "prompt": f"Ref CANARY-{c['prompt']}: {prompt}", "completion": answer}, {
            "canary completion": c["text"],
            "canary prompt": c["prompt"],
        }
    return {**base, "text": prompt + answer, "prompt": prompt, "answer": answer}, {"canary text": c["text"]}


@pytest.mark.parametrize(
    ("mode", "record_format"), [("exact", "text"), ("fast", "text"), ("fast", "chat"), ("exact", "prompt-completion")]
)
def test_a_forgotten_canary_is_found_nowhere(tmp_path, capfd, mode, record_format, request):
    backend = request.getfixturevalue("ray_backend") if mode == "exact" else "serial"
    temp_before = temp_files()
    canary_meta, rid_hex, subject_hex = (uuid.uuid4().hex for _ in range(3))
    record_id, subject_id = f"rec-{rid_hex}", f"subject-{subject_hex}"
    record, planted = canary_record(record_format, record_id, subject_id, canary_meta)
    needles = {**planted, "canary metadata": canary_meta, "record id": rid_hex, "subject id": subject_hex}
    rows = [{**r, "note": "routine"} for r in as_format(make_people(14, seed=41), record_format)]
    rows.insert(9, record)
    inputs = tmp_path / "input"  # the user's own file: not sisa's to delete
    inputs.mkdir()
    write_jsonl(rows, inputs / "people.jsonl")
    store_dir = tmp_path / "s"
    args = cli_args(store_dir, "sharding.slice_size=4", "training.epochs=2", tracking=True, backend=backend)
    sisa = RecordingCli(capfd)
    output = sisa.output

    capfd.readouterr()
    sisa("ingest", str(inputs / "people.jsonl"), *args)
    sisa("train", *args)
    sisa("status", *args)
    sisa("versions", *args)
    sisa("eval", "--file", str(inputs / "people.jsonl"), *args)

    # Positive controls: the scan finds what is there, so a clean result below means something.
    before = find_canaries({"store": store_dir}, needles, strict={"store"})
    assert all(before.values()), before
    assert all(any(h.how == "parquet" for h in before[k]) for k in planted)
    db = store_dir / "mlflow.db"
    assert db.is_file(), "training with tracking on should create the MLflow database in the store"
    assert [h.how for h in find_canaries({"mlflow": [db]}, {"model": "sisa-model"})["model"]] == ["raw", "sqlite"]
    control = Path(tempfile.mkstemp(prefix="sisa-canary-control-", dir=tempfile.gettempdir())[1])
    control.write_text("control " + "f" * 32)
    assert find_canaries({"temp": new_temp_files(temp_before, inputs)}, {"control": "f" * 32})["control"]
    control.unlink()
    # Every tracked version is a logged MLflow model whose manifest names its checkpoints: the scan
    # reads those files (they name the checkpoints that the forget will purge).
    serving_ckpts = {f"checkpoint {c}": c for c in _serving_checkpoints(store_dir)}
    mlflow_places = {"mlflow db": [db], "mlflow artifacts": store_dir / "mlartifacts"}
    assert list((store_dir / "mlartifacts" / "models").glob("*/artifacts/artifacts/sisa_bundle.json"))
    assert all(find_canaries(mlflow_places, serving_ckpts).values())

    # Forget the record, then use every read-only verb on the result.
    sisa("forget", "--ids", record_id, *(["--fast"] if mode == "fast" else []), *args)
    store = Store.open(str(store_dir))
    (req,) = ledgers.list_requests(store.fs)
    assert req["status"] == "completed" and req["mode"] == mode and req["records"] == 1
    assert req["id_hashes"] == [store.hash_id(record_id)]  # the ledger keeps the keyed hash only
    if mode == "fast":
        assert req["versions"]["approximate"] and req["versions"]["exact"]
    sisa("certificate", req["request_id"], *args)
    sisa("certificate", req["request_id"], "--json", *args)
    sisa("requests", *args)
    sisa("requests", "--json", *args)
    sisa("versions", "--json", *args)
    sisa("status", *args)
    assert "verified" in sisa("verify", req["request_id"], "--replay", *args)
    assert "committed model version" in "".join(output)  # the capture works

    # The purged checkpoints are named nowhere in MLflow: the models of the versions holding them
    # went with their runs; what is left are the models of the versions still active.
    purged = {f"checkpoint {c}": c for c in req["purge"]["checkpoints"]}
    assert purged and not any(find_canaries(mlflow_places, purged).values())
    active = {v.mlflow["model_id"] for v in versions.all_versions(store) if v.status == versions.ACTIVE and v.mlflow}
    assert sorted(p.name for p in (store_dir / "mlartifacts" / "models").iterdir()) == sorted(active)

    # Nothing anywhere.
    # MLflow's own `Default` experiment names <cwd>/mlruns/0; nothing logs there, so it may not exist.
    artifacts = mlflow_artifact_dirs(store_dir)
    assert (store_dir / "mlartifacts").resolve() in {a.resolve() for a in artifacts if a.is_dir()}, (
        f"MLflow's artifact folders: {artifacts}"
    )
    artifacts = [a for a in artifacts if a.exists()]
    places = {
        "store": store_dir,
        **{f"mlflow artifacts {a}": a for a in artifacts},
        "temp": new_temp_files(temp_before, inputs),
    }
    leaks = {k: [str(h) for h in v] for k, v in find_canaries(places, needles, strict={"store"}).items() if v}
    for k in canaries_in_text("".join(output), needles):
        leaks.setdefault(k, []).append("CLI output")
    assert not leaks, f"deleted data survives ({mode}): {json.dumps(leaks, indent=1)[:3000]}"
