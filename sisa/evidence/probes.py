"""Probe files: prompts with expected answers, the evidence of what a version knows.

    {"prompt": "Norma Fisher is employed as a", "answer": " futures trader.", "kind": "paraphrase",
     "subject_id": "person-00003"}   (one object a line)

`kind` is one of
- `paraphrase`: the same fact asked in other words (generalization);
- `related`: the fact reached another way, such as a question (generalization);
- `locality`: a fact the request must leave alone (locality: unchanged from the version before).

A `paraphrase` or `related` probe counts for a request when it has no `subject_id` or names one of
the request's subjects; a `locality` probe when it has none or names any other subject. So one
file (what `sisa synth --probes` writes for all its people) serves every request. An optional
`old_answer` names, for a rectification, the answer that must no longer come out (otherwise a
probe whose answer is a corrected record's old answer is expected to give its new one).

Probes are read into memory, used, and dropped: only numbers are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from sisa.data.sources import read_source
from sisa.storage.errors import ValidationError, list_some

KINDS = ("paraphrase", "related", "locality")


@dataclass(frozen=True)
class Probe:
    prompt: str
    answer: str
    kind: str
    subject_id: str | None = None
    old_answer: str | None = None


def read_probes(path: str) -> list[Probe]:
    """Every probe of a JSONL/CSV/Parquet file; one error naming every bad row (by number, never text)."""
    source = read_source(path)
    table = source.table
    missing = [c for c in ("prompt", "answer", "kind") if c not in table.column_names]
    if missing:
        raise ValidationError(
            f"--probes {path}: missing column(s) {missing}; a probe has prompt, answer, kind "
            f"({'|'.join(KINDS)}), optional subject_id"
        )
    rows = table.to_pylist()
    bad_kind = [i + 1 for i, r in enumerate(rows) if r.get("kind") not in KINDS]
    empty = [i + 1 for i, r in enumerate(rows) if not _text(r.get("prompt")) or not _text(r.get("answer"))]
    problems = []
    if bad_kind:
        problems.append(
            f"{len(bad_kind)} {source.unit}(s) with a kind other than {', '.join(KINDS)}: {source.unit}s "
            f"{list_some(bad_kind)}"
        )
    if empty:
        problems.append(
            f"{len(empty)} {source.unit}(s) with an empty prompt or answer: {source.unit}s {list_some(empty)}"
        )
    if not rows:
        problems.append("no probes")
    if problems:
        raise ValidationError(
            f"--probes {path} cannot be used; nothing was changed:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return [
        Probe(
            r["prompt"], r["answer"], r["kind"], _text(r.get("subject_id")) or None, _text(r.get("old_answer")) or None
        )
        for r in rows
    ]


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def for_request(probes: list[Probe], subjects: set[str]) -> tuple[list[Probe], list[Probe]]:
    """(generalization probes, locality probes) that count for a request about `subjects`."""
    general = [p for p in probes if p.kind != "locality" and (p.subject_id is None or p.subject_id in subjects)]
    local = [p for p in probes if p.kind == "locality" and (p.subject_id is None or p.subject_id not in subjects)]
    return general, local
