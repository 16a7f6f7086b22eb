"""Helpers shared by the test folders: the tiny config, the CLI in-process, a store's digest.

Plain functions, imported by name (`from tests.helpers import make_cfg`); the fixtures live in
the conftest files, which pytest loads itself and which are not imported as modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

from pipelines.cli import main
from sisa.config import SisaConfig, load_config

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


# -- configs and the CLI ----------------------------------------------------------------------------
def overrides(root: Path | str, *extra: str, tracking: bool = False, backend: str = "serial") -> list[str]:
    """Dotted overrides of configs/tiny.yaml: a store at `root`, serial and untracked by default;
    `extra` comes last, so it wins."""
    return [f"store.uri={root}", f"scheduler.backend={backend}", f"tracking.enabled={str(tracking).lower()}", *extra]


def make_cfg(root: Path | str, *extra: str, tracking: bool = False, backend: str = "serial") -> SisaConfig:
    return load_config(TINY, overrides(root, *extra, tracking=tracking, backend=backend))


def cli_args(root: Path | str, *extra: str, tracking: bool = False, backend: str = "serial") -> list[str]:
    """The same config spelled for `sisa VERB ...`."""
    return ["--config", TINY, *overrides(root, *extra, tracking=tracking, backend=backend)]


def run_cli(*argv: str, capfd=None) -> tuple[int, str, str]:
    """`sisa ARGV...` in this process: (exit code, stdout, stderr) as the user would see them.

    What Python code prints is captured here; given pytest's `capfd`, what reached the file
    descriptors (native code, handlers bound to the real streams) is appended, so a test that
    must see every byte printed passes it.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    stdout, stderr = out.getvalue(), err.getvalue()
    if capfd is not None:
        fd_out, fd_err = capfd.readouterr()
        stdout, stderr = stdout + fd_out, stderr + fd_err
    return code, stdout, stderr


# -- store state --------------------------------------------------------------------------------------
def tree_digest(root: Path | str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every folder and file under `root` with its sha256 (files in `skip`, relative paths, left
    out): a store's exact state, to prove an operation changed nothing."""
    root = str(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames.sort()
        out[rel + "/"] = "dir"
        for name in sorted(filenames):
            path = os.path.join(rel, name)
            if path in skip:
                continue
            with open(os.path.join(dirpath, name), "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out
