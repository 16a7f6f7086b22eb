"""Tampering and damage: checkpoints are verified by sha256 on load, pickle is never loaded.

README, "Crashes": checkpoints are safetensors + JSON, verified by sha256 on load; never
pickle. Through the real CLI (in-process), a damaged or altered file of a serving checkpoint
stops `sisa verify` (exit 7), `sisa generate` and a training that continues from it, with a
message naming the file and the checkpoint. A pickle dropped into a checkpoint folder is refused
by name and never unpickled (its payload would leave a marker file). A scan of the source tree
proves nothing calls `torch.load` without `weights_only=True` or any other unpickler.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
from sisa.storage.errors import IntegrityError
from sisa.storage.store import Store

from sisa.data.synthetic import write_jsonl
from sisa.lineage import checkpoints, versions
from tests.helpers import REPO, cli_args, run_cli, tree_digest
from tests.reliability.helpers import SLICES, people


def serving_checkpoint(root: Path, shard: int = 1) -> tuple[str, Path]:
    store = Store.open(str(root))
    cid = versions.shard_checkpoints(versions.current(store))[shard]
    return cid, Path(store.fs.full(f"checkpoints/shard={shard:05d}/{cid}"))


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":  # same size, one bit different: only a digest notices
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    else:  # append
        path.write_bytes(data + b"\x00")


def assert_refused(result: tuple[int, str, str], *names: str, code: int | None = None) -> str:
    exit_code, out, err = result
    text = out + err
    assert exit_code != 0, f"should have refused:\n{text[-2000:]}"
    if code is not None:
        assert exit_code == code, text[-2000:]
    assert "Traceback" not in err, err[-3000:]
    for name in names:
        assert name in text, f"{name!r} should be named:\n{text[-2000:]}"
    return text


# -- damaged files -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("adapter_model.safetensors", "truncate"),
        ("adapter_model.safetensors", "flip"),
        ("optimizer.safetensors", "flip"),
        ("adapter_config.json", "append"),
        ("lineage.parquet", "truncate"),
        ("optimizer.json", "append"),
    ],
)
def test_a_damaged_checkpoint_file_is_named_and_never_served(trained_store, name, how):
    root = trained_store
    cid, folder = serving_checkpoint(root)
    damage(folder / name, how)
    before = tree_digest(root)

    text = assert_refused(run_cli("verify", *cli_args(root, *SLICES)), name, cid, code=7)
    assert "integrity  FAILED" in text and "VERIFICATION FAILED" in text
    assert_refused(
        run_cli("generate", "--prompt", "Ada Lane works as a", "--max-new-tokens", "2", *cli_args(root, *SLICES)),
        name,
        cid,
    )
    with pytest.raises(IntegrityError, match=name):
        checkpoints.open_checkpoint(Store.open(str(root)), cid)
    assert tree_digest(root) == before, "a refused load changed the store"


def test_training_refuses_to_continue_from_a_damaged_checkpoint(trained_store, tmp_path):
    root = trained_store
    cid, folder = serving_checkpoint(root, shard=1)
    code, _, err = run_cli(
        "ingest", str(write_jsonl(people(12, seed=5, start=700), tmp_path / "more.jsonl")), *cli_args(root, *SLICES)
    )
    assert code == 0, err
    damage(folder / "optimizer.safetensors", "flip")
    versions_before = tree_digest(root / "versions"), (root / "CURRENT").read_bytes()

    text = assert_refused(run_cli("train", *cli_args(root, *SLICES)), "shard_id 1", "optimizer.safetensors", cid)
    assert "IntegrityError" in text
    assert (tree_digest(root / "versions"), (root / "CURRENT").read_bytes()) == versions_before


def test_a_damaged_manifest_is_named(trained_store):
    root = trained_store
    cid, folder = serving_checkpoint(root)
    damage(folder / checkpoints.MANIFEST, "truncate")
    assert_refused(run_cli("verify", *cli_args(root, *SLICES)), checkpoints.MANIFEST, cid)
    assert_refused(
        run_cli("generate", "--prompt", "x", "--max-new-tokens", "1", *cli_args(root, *SLICES)),
        checkpoints.MANIFEST,
        cid,
    )


# -- pickles --------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates a file: proof that something loaded the pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(
    "name", ["adapter_model.bin", "training_args.bin", "optimizer.pt", "rng_state.pth", "lineage.pkl"]
)
@pytest.mark.parametrize("mode", ["added", "replacing the adapter"])
def test_a_pickle_in_a_checkpoint_folder_is_refused_by_name_and_never_loaded(trained_store, tmp_path, name, mode):
    root = trained_store
    cid, folder = serving_checkpoint(root)
    marker = tmp_path / "UNPICKLED"
    (folder / name).write_bytes(pickle.dumps(_Payload(str(marker))))
    if mode == "replacing the adapter":  # what peft would fall back to without the safetensors file
        (folder / "adapter_model.safetensors").unlink()

    assert_refused(run_cli("verify", *cli_args(root, *SLICES)), name, cid, code=7)
    assert_refused(
        run_cli("generate", "--prompt", "Ada Lane works as a", "--max-new-tokens", "2", *cli_args(root, *SLICES)),
        name,
        cid,
    )
    with pytest.raises(IntegrityError, match=name.replace(".", r"\.")):
        checkpoints.open_checkpoint(Store.open(str(root)), cid)
    assert not marker.exists(), f"{name} was unpickled"


# -- the source tree --------------------------------------------------------------------------------------
SCANNED = ("sisa", "storage", "pipelines", "benchmarks")
UNPICKLERS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cPickle", "load"),
    ("cPickle", "loads"),
    ("_pickle", "load"),
    ("_pickle", "loads"),
    ("dill", "load"),
    ("dill", "loads"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("joblib", "load"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("torch", "load"),
    ("np", "load"),
    ("numpy", "load"),
}


def _unsafe_calls(source: str, filename: str) -> list[str]:
    """`module.function(...)` calls that can unpickle, also when imported under another name."""
    tree = ast.parse(source, filename)
    aliases: dict[str, tuple[str, str]] = {}  # local name -> (module, attribute)
    modules: dict[str, str] = {}  # local name -> module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                modules[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = (node.module, a.name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            target = (modules.get(f.value.id, f.value.id), f.attr)
        elif isinstance(f, ast.Name) and f.id in aliases:
            target = aliases[f.id]
        else:
            continue
        target = ({"numpy": "np", "pandas": "pd"}.get(target[0], target[0]), target[1])
        if target not in UNPICKLERS:
            continue
        kwargs = {k.arg: k.value for k in node.keywords}
        if (
            target == ("torch", "load")
            and isinstance(kwargs.get("weights_only"), ast.Constant)
            and kwargs["weights_only"].value is True
        ):
            continue
        if target == ("np", "load") and not (
            isinstance(kwargs.get("allow_pickle"), ast.Constant) and kwargs["allow_pickle"].value is True
        ):
            continue
        found.append(f"{filename}:{node.lineno}: {ast.unparse(node)[:120]}")
    return found


def test_the_scanner_finds_every_kind_of_unpickling():
    bad = """
import torch, pickle, numpy as np
import pickle as pk
from torch import load as tload
from pandas import read_pickle
torch.load(path)
torch.load(path, weights_only=False)
tload(path)
pickle.loads(blob)
pk.load(f)
np.load(path, allow_pickle=True)
read_pickle(path)
"""
    good = """
import torch, numpy as np
torch.load(path, weights_only=True)
np.load(path)
json.load(f)
"""
    assert len(_unsafe_calls(bad, "bad.py")) == 7
    assert _unsafe_calls(good, "good.py") == []


def test_no_source_file_can_unpickle():
    files = [p for d in SCANNED for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 30
    found = [hit for p in files for hit in _unsafe_calls(p.read_text(), str(p.relative_to(REPO)))]
    assert found == [], "calls that can unpickle:\n" + "\n".join(found)
    # Belt and braces for code the parser cannot see (strings fed to exec, notebooks pasted in).
    text_hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), start=1)
        if ("torch.load(" in line and "weights_only=True" not in line) or "pickle.load" in line
    ]
    assert text_hits == [], text_hits
