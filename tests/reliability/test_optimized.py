"""`python -O` drops every assert: the verbs must work the same (no write may hide in an assert).

Runs the real `sisa` command in child processes with PYTHONOPTIMIZE=1: ingest, train, forget,
versions, then checks what each verb must have written really is on disk.
"""

from __future__ import annotations

import json

import pytest
from sisa.storage import layout

from sisa.data.synthetic import make_people, write_jsonl
from tests.helpers import cli_args
from tests.reliability.helpers import describe, sisa_proc

pytestmark = pytest.mark.slow


def test_every_verb_writes_under_python_O(tmp_path):
    data = write_jsonl(make_people(12, seed=3), tmp_path / "people.jsonl")
    root = tmp_path / "s"
    args = cli_args(root)
    # Under -O Python reads *.opt-1.pyc files, which the install does not compile: each child would
    # compile torch, transformers, peft and Ray from source again (~20 s a verb, measured here). A
    # bytecode folder of this test's own, outside the venv, lets the first child compile them once.
    opt = {"PYTHONOPTIMIZE": "1", "PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(tmp_path / "pyc")}

    p = sisa_proc("ingest", str(data), *args, **opt)
    assert p.returncode == 0, describe(p)
    # The ingest committed: its ledger entry exists, so its records are live (not gc leftovers).
    assert len(list((root / layout.INGESTS).glob("*.json"))) == 1
    p = sisa_proc("status", *args, "--json", **opt)
    assert p.returncode == 0 and json.loads(p.stdout)["records"] == 24, describe(p)

    p = sisa_proc("train", *args, **opt)
    assert p.returncode == 0, describe(p)
    current = json.loads((root / layout.CURRENT).read_text())["model_version"]
    assert current == 1 and (root / layout.version_entry(1)).is_file()

    p = sisa_proc("forget", *args, "--subject", "person-00001", "--no-evidence", **opt)
    assert p.returncode == 0, describe(p)
    p = sisa_proc("versions", *args, "--json", **opt)
    assert p.returncode == 0, describe(p)
    listed = json.loads(p.stdout)
    assert listed["current"] == 2 and [v["status"] for v in listed["versions"]] == ["purged", "active"]
    p = sisa_proc("status", *args, "--json", **opt)
    st = json.loads(p.stdout)
    # The ingest's record count follows the deletion (2 facts of person-00001 went).
    assert st["records"] == 22 and [e["records"] for e in st["ingests"]] == [22]
