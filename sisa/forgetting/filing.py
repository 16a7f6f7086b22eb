"""What a request is filed with, from a caller's plain arguments (the `sisa forget`/`rectify`
flags, `SisaStore.forget`): the mode that serves until the exact version, the evidence inputs
read into memory, and who files it."""

from __future__ import annotations

import getpass

from sisa.config import SisaConfig
from sisa.data import normalise, read_source, table_items
from sisa.evidence import Probe, read_probes
from sisa.forgetting.options import Filer, Texts
from sisa.lineage import RequestMode
from sisa.storage.errors import ValidationError


def request_mode(cfg: SisaConfig, fast: bool, isolate: bool, relief: bool | None) -> RequestMode:
    """What serves between the request and its exact version; `relief` None: `deletion.relief`."""
    if fast and isolate:
        raise ValidationError("choose one of fast (--fast) and isolate (--isolate)")
    relief = cfg.deletion.relief if relief is None else relief
    return (
        RequestMode.FAST
        if fast
        else RequestMode.ISOLATE
        if isolate
        else RequestMode.RELIEF
        if relief
        else RequestMode.EXACT
    )


def login_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in this environment (a container without one)
        return "cli"


def filer(name: str | None, identity_verification: str | None) -> Filer:
    """Who files a request: `name` (`--as NAME`), else the login name."""
    return Filer(name or login_name(), identity_verification)


def read_evidence_inputs(
    cfg: SisaConfig, evidence: bool, holdout: str | Texts | None, probes: str | list[Probe] | None
) -> tuple[Texts | None, list[Probe] | None]:
    """--holdout and --probes read into memory (each a file, or already read), or None without
    evidence; read before the store is touched, so a bad file changes nothing."""
    if not evidence:
        return None, None
    held = (holdout if isinstance(holdout, tuple) else read_holdout(cfg, holdout)) if holdout else None
    probe_list = (read_probes(probes) if isinstance(probes, str) else probes) if probes else None
    return held, probe_list


def read_holdout(cfg: SisaConfig, path: str) -> Texts:
    """Records no model saw (a file in the ingest formats): the baseline a forgotten record
    should look like after the exact path. Read into memory only, never stored."""
    table, problems = normalise(read_source(path), cfg)
    if problems:
        raise ValidationError("--holdout cannot be read:\n" + "\n".join(f"  - {p}" for p in problems))
    items = table_items(table)
    prompts = table["prompt"].to_pylist() if "prompt" in table.column_names else None
    if prompts is None and any(not isinstance(t, str) for t in items):
        prompts = [None] * len(items)  # structured records are scored on their answers alone
    return items, prompts
