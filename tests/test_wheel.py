"""sisa as a user installs it: the wheel built from this repository, installed into a fresh virtual
environment outside it (the lock as constraints), runs ingest → train → forget → verify on the tiny
model from an empty folder, with none of the repository's files: the configs and policies it
uses are the ones the package ships."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sisa.offline import OFFLINE_ENV
from tests.helpers import REPO

pytestmark = pytest.mark.slow

OFFLINE = OFFLINE_ENV  # what the sisa command sets for itself, given to every child here too


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv[:3]))} exited {done.returncode}: {done.stderr[-3000:]}"
    return done.stdout


def build_wheel(out: Path) -> Path:
    """`pip wheel` of the repository with the setuptools already in this environment."""
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)]
    _run(argv, out, dict(os.environ))
    (wheel,) = out.glob("sisa-*.whl")
    return wheel


def user_env(venv: Path) -> dict[str, str]:
    """A user's shell: this environment's PATH behind the venv's, no PYTHONPATH, offline."""
    keep = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("SISA_")}
    return keep | OFFLINE | {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_the_wheel_installs_one_package_and_runs_the_tiny_flow(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"sisa", wheel.name.split("-py")[0] + ".dist-info"}
    # the repository's folders, nested in the one package
    for path in ("configs/tiny.yaml", "configs/policies/four-eyes.yaml", "storage/errors.py", "pipelines/cli.py"):
        assert f"sisa/{path}" in names, path
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    # a fresh environment outside the repository; uv finds this machine's CPU torch as make does
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    uv = str(Path(sys.executable).with_name("uv"))
    env = dict(os.environ)
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    if links:
        env["UV_FIND_LINKS"] = ",".join(links)
    _run([uv, "venv", "-q", "--python", sys.executable, str(venv)], tmp_path, env)
    python = str(venv / "bin" / "python")
    lock = str(REPO / "requirements.lock")
    _run([uv, "pip", "install", "-q", "--python", python, "-c", lock, str(wheel)], tmp_path, env)

    user = user_env(venv)
    sisa = str(venv / "bin" / "sisa")
    assert _run([sisa, "--version"], work, user).strip() == "sisa 0.1.0"
    probe = "import importlib.util as u; print([m for m in ('storage', 'pipelines') if u.find_spec(m)])"
    assert _run([python, "-c", probe], work, user).strip() == "[]"

    # `configs/tiny.yaml` and the policy are not in this folder: the packaged copies are used
    common = [
        "--config",
        "configs/tiny.yaml",
        "store.uri=store",
        "scheduler.backend=serial",
        "tracking.enabled=false",
        "deletion.policy=configs/policies/default.yaml",
    ]
    _run([sisa, "synth", "--people", "8", "--out", "people.jsonl"], work, user)
    ingested = json.loads(_run([sisa, "ingest", "people.jsonl", "--json", *common], work, user))
    assert ingested[0]["records"] == 16
    assert json.loads(_run([sisa, "train", "--json", *common], work, user))["model_version"] == 1
    forgotten = json.loads(_run([sisa, "forget", "--subject", "person-00003", "--json", *common], work, user))
    request = forgotten["request"]
    assert request["status"] == "completed" and request["records"] == 2
    report = json.loads(_run([sisa, "verify", request["request_id"], "--replay", "--json", *common], work, user))
    assert report["passed"] and report["replay"] and all(r["identical"] for r in report["replay"].values())
    assert sorted(p.name for p in work.iterdir()) == ["people.jsonl", "store"]
