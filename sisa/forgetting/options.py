"""What a caller chooses about one request it files: `RequestOptions` (how it is carried out and
what evidence it measures) and `Filer` (who files it). `runner.forget` and `runner.rectify` take
them by name, as do the CLI verbs, the service's routes and the demo:

    runner.forget(store, cfg, "subject", ["person-00003"], RequestOptions(mode=RequestMode.RELIEF, queue=True))

Both are frozen and hold no store, lock or callback: what reports progress (`log`,
`on_version`, the evidence's `models`) is passed beside them, keyword-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sisa.data.formats import Item
from sisa.evidence.probes import Probe
from sisa.lineage.requests_ledger import RequestMode
from sisa.storage.errors import ValidationError

Texts = tuple[list[Item], list[str | None] | None]  # records held in memory: their items and prompts


@dataclass(frozen=True)
class Filer:
    """Who files a request (a token's name, `--as` or the login name) and their attestation of how
    the data subject's identity was verified (how, never whose: no ids, names or record text)."""

    name: str | None = None
    identity_verification: str | None = None


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RequestOptions:
    """How one deletion or rectification is filed and carried out. The defaults are a request
    carried out at once, exactly, with its evidence measured; `mode` may be given by name."""

    mode: RequestMode = _f(
        RequestMode.EXACT,
        "What serves until the exact version: exact (nothing new), relief (affected shards at their last clean "
        "checkpoint), fast (an approximate version), isolate (the unaffected shards alone). The policy's rule "
        "may decide another (deletion.policy).",
    )
    queue: bool = _f(False, "Record the request, serve its bridge and return; a batch (`process`) carries it out.")
    dry_run: bool = _f(False, "Select, validate, plan and decide only: nothing is recorded or changed.")
    allow_missing: bool = _f(False, "A deletion's unknown ids are skipped instead of refused (forget only).")
    evidence: bool = _f(True, "Measure the records' loss under each version while their text is in memory.")
    holdout: Texts | None = _f(None, "Records no model saw, in memory: the stranger baseline and MIA non-members.")
    probes: tuple[Probe, ...] | None = _f(None, "Probes: the trio, leak@k and locality of every version.")
    idempotency_key: str | None = _f(None, "A client's key: filing again with it returns the first request.")
    filer: Filer = _f(Filer(), "Who files it and how the data subject's identity was verified.")

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.mode, RequestMode):
            try:
                object.__setattr__(self, "mode", RequestMode(self.mode))
            except ValueError:
                choices = ", ".join(m.value for m in RequestMode)
                problems.append(f"mode should be one of {choices}, got {self.mode!r}")
        if self.probes is not None:
            object.__setattr__(self, "probes", tuple(self.probes))
            if not all(isinstance(p, Probe) for p in self.probes):
                problems.append("probes should be Probe objects (sisa.evidence.read_probes reads a file)")
        if self.holdout is not None and (not isinstance(self.holdout, tuple) or len(self.holdout) != 2):
            problems.append("holdout should be (items, prompts or None), as read_holdout returns it")
        if not isinstance(self.filer, Filer):
            problems.append(f"filer should be a Filer, got {type(self.filer).__name__}")
        if problems:
            raise ValidationError("bad request options:\n" + "\n".join(f"  - {p}" for p in problems))
