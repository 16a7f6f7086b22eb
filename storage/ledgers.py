"""Ledgers (ingests, model versions, deletion requests) and the current pointer.

Each ledger entry is its own small JSON file written atomically, so an entry is either wholly
there or absent. A new entry is created once (`write_new_json` refuses to overwrite); afterwards
an entry changes only by an atomic rewrite of that one file: a deletion request's status moves
forward, a model version's status moves from active to purged and gains its MLflow reference,
an ingest's record count drops when a deletion removes some of its records. This module speaks
plain JSON dicts; `sisa/` gives them types.
"""

from __future__ import annotations

from typing import Any

from sisa.storage import layout
from sisa.storage.errors import NotFoundError, StoreError, ValidationError
from sisa.storage.fs import StoreFS


# -- ingests ----------------------------------------------------------------------------------
def list_ingests(fs: StoreFS) -> list[dict[str, Any]]:
    return [fs.read_json(fs.rel(i.path)) for i in fs.list(layout.INGESTS) if i.path.endswith(".json")]


def write_ingest(fs: StoreFS, entry: dict[str, Any]) -> None:
    rel = layout.ingest_entry(entry["seq"], entry["ingest_id"])
    if not fs.write_new_json(rel, entry):
        raise StoreError(f"ingest entry {rel} exists already; another writer committed the same ingest")


def rewrite_ingest(fs: StoreFS, entry: dict[str, Any]) -> None:
    """Counts of an ingest change when a deletion removes its records."""
    fs.write_json(layout.ingest_entry(entry["seq"], entry["ingest_id"]), entry)


# -- model versions ---------------------------------------------------------------------------
def list_versions(fs: StoreFS) -> list[dict[str, Any]]:
    return [fs.read_json(fs.rel(i.path)) for i in fs.list(layout.VERSIONS) if i.path.endswith(".json")]


def read_version(fs: StoreFS, model_version: int) -> dict[str, Any]:
    rel = layout.version_entry(model_version)
    if not fs.exists(rel):
        raise NotFoundError(f"model version {model_version} does not exist (see `sisa versions`)")
    return fs.read_json(rel)


def write_version(fs: StoreFS, entry: dict[str, Any], new: bool = True) -> None:
    rel = layout.version_entry(entry["model_version"])
    if new:
        if not fs.write_new_json(rel, entry):
            raise StoreError(f"model version {entry['model_version']} exists already; another writer committed it")
    else:
        fs.write_json(rel, entry)


def next_version_number(fs: StoreFS) -> int:
    versions = list_versions(fs)
    return max((v["model_version"] for v in versions), default=0) + 1


def read_current(fs: StoreFS) -> int | None:
    """The serving model version, or None before the first training."""
    if not fs.exists(layout.CURRENT):
        return None
    return int(fs.read_json(layout.CURRENT)["model_version"])


def write_current(fs: StoreFS, model_version: int) -> None:
    """Move the serving pointer: one atomic write."""
    fs.write_json(layout.CURRENT, {"model_version": model_version})


# -- deletion requests ------------------------------------------------------------------------
def list_requests(fs: StoreFS) -> list[dict[str, Any]]:
    out = [fs.read_json(fs.rel(i.path)) for i in fs.list(layout.REQUESTS) if i.path.endswith(".json")]
    return sorted(out, key=lambda r: r["received_at"])


def read_request(fs: StoreFS, request_id: str) -> dict[str, Any]:
    if not request_id or request_id.startswith(".") or any(c in request_id for c in "/\\\x00"):
        # A request id names one file in requests/; a path must never reach outside it.
        raise ValidationError(f"{request_id!r} is not a deletion request id (see `sisa requests`)")
    rel = layout.request_entry(request_id)
    if not fs.exists(rel):
        raise NotFoundError(f"deletion request {request_id} does not exist (see `sisa requests`)")
    return fs.read_json(rel)


def write_request(fs: StoreFS, entry: dict[str, Any]) -> None:
    fs.write_json(layout.request_entry(entry["request_id"]), entry)
