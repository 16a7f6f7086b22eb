"""Packages whose names load on first use (sisa/lazy.py): the verbs that read the ledger load no
torch, and every name a package exports still resolves."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

import pytest

# The verbs that only read or write the store's tables: listing, certificates, rollback, status,
# and the modules of forget and verify (a dry run and a check without --replay train nothing).
LIGHT_VERBS = ["versions", "list_requests", "certificate", "rollback", "status", "forget", "verify"]


def test_the_ledger_verbs_import_no_torch_peft_ray_or_mlflow() -> None:
    modules = [f"sisa.pipelines.{v}" for v in LIGHT_VERBS if importlib.util.find_spec(f"sisa.pipelines.{v}")]
    assert len(modules) == len(LIGHT_VERBS), modules
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'peft', 'ray', 'mlflow', 'transformers'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"a ledger verb loads {out.strip()}"


@pytest.mark.parametrize("package", ["sisa.model", "sisa.forgetting", "sisa.serving", "sisa.evidence", "sisa.training"])
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    assert set(module.__all__) <= set(dir(module))


def test_a_name_loads_its_submodule_and_an_unknown_name_is_an_attribute_error() -> None:
    from sisa.model import LengthReport
    from sisa.model.lengths import LengthReport as direct

    assert LengthReport is direct
    import sisa.training

    assert sisa.training.scheduler is importlib.import_module("sisa.training.scheduler")  # a submodule by name
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        sisa.training.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from sisa.training import no_such_name  # noqa: F401
