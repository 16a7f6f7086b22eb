"""The mechanics of rectification (GDPR Art. 16): validate corrections, stage them, rewrite the data.

A correction names a live record by `record_id` and gives its new content in the format the
record is stored in: a new `text` (optionally a new `prompt` and `answer`), a `prompt` +
`completion`, or `messages`, normalised to canonical JSON in `text` as ingest stores such a
record. The record keeps its id, subject, shard and slice position; only its
content changes. `sisa/forgetting/runner.py` carries a rectification through the same phases as a
deletion: the old content is what the request forgets (its keyed (id, content) hashes are the
request's `id_hashes`, what lineage, purge and rollback checks look for), and the retrain from the
earliest affected slice trains the new content in.

Corrections come from a file (`sisa rectify --file`) or from rows (`from_rows`: the service's
POST /v1/rectifications body), and are validated the same way. The new content is staged in the
store (`corrections/<request_id>.parquet`) before the request enters the ledger, so a
rectification cut short by a crash, or queued for a batch (`--queue`), resumes with it; the
staged file is deleted once the slice files hold the new text. The old text is never written
anywhere, and neither text goes into an error message.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from sisa.config import SisaConfig
from sisa.data.formats import FORMAT_COLUMN, TEXT, Item, decode
from sisa.data.ingestion import content_sha256, normalise
from sisa.data.sources import from_table
from sisa.forgetting import selection
from sisa.forgetting.record_texts import row_slices
from sisa.lineage import checkpoints, requests_ledger
from sisa.model.base import load_tokenizer
from sisa.model.lengths import disallowed, measure_records
from sisa.storage import layout, records
from sisa.storage.errors import ValidationError, list_some
from sisa.storage.schemas import INDEX_SCHEMA
from sisa.storage.store import Store

CORRECTABLE = ("text", "prompt", "answer")
ALLOWED = ("record_id", "subject_id", *CORRECTABLE)


@dataclass
class Corrections:
    """Validated corrections: the new content (record_id, text, content_sha256, and the prompt and
    answer columns when given) and the index rows of the records they correct."""

    new: pa.Table
    rows: pa.Table

    @property
    def ids(self) -> list[str]:
        return self.new["record_id"].to_pylist()

    def content_hashes(self, store: Store) -> list[dict[str, str]]:
        """{"old", "new"} keyed (id, content) hashes per record, in record id order."""
        old_sha = dict(zip(self.rows["record_id"].to_pylist(), self.rows["content_sha256"].to_pylist(), strict=True))
        ids = sorted(self.ids)
        new_sha = dict(zip(self.ids, self.new["content_sha256"].to_pylist(), strict=True))
        old = checkpoints.content_hashes(store, ids, [old_sha[i] for i in ids])
        new = checkpoints.content_hashes(store, ids, [new_sha[i] for i in ids])
        return [{"old": o, "new": n} for o, n in zip(old, new, strict=True)]


def from_rows(rows: list[dict], cfg: SisaConfig, name: str = "request body") -> tuple[pa.Table, list[str]]:
    """Corrections given as rows (the service's JSON body: record_id and the new content in the
    record's format: text with optional prompt and answer, prompt + completion, or messages),
    normalised as a corrections file is: (table, problems) for `validate`."""
    ic = cfg.ingest
    columns: dict[str, pa.Array] = {ic.id_field: pa.array([r.get("record_id") for r in rows], pa.string())}
    for column, field_name in (
        ("text", ic.text_field),
        ("prompt", "prompt"),
        ("answer", "answer"),
        ("completion", "completion"),
    ):
        if any(r.get(column) is not None for r in rows):
            columns[field_name] = pa.array([r.get(column) for r in rows], pa.string())
    if any(r.get("messages") is not None for r in rows):
        turn = pa.struct([("role", pa.string()), ("content", pa.string())])
        columns["messages"] = pa.array([r.get("messages") for r in rows], pa.list_(turn))
    return normalise(from_table(pa.table(columns), name), cfg)


def validate(store: Store, cfg: SisaConfig, table: pa.Table, problems: list[str] | None = None) -> Corrections:
    """Check every correction against the store and the training config; raise one error naming
    every bad id, or return them validated. `table` is a normalised source (record_id, text,
    subject_id, extra columns); `problems` are what normalising it found already (empty text,
    duplicate ids)."""
    problems = list(problems or [])
    # What normalising adds: a correction given as `messages` or `prompt` + `completion` is
    # stored as canonical JSON in `text`, as ingest stores such a record.
    kinds = table[FORMAT_COLUMN].to_pylist() if FORMAT_COLUMN in table.column_names else [None] * table.num_rows
    given_formats = dict(zip(table["record_id"].to_pylist(), (k or TEXT for k in kinds), strict=True))
    if FORMAT_COLUMN in table.column_names:
        table = table.drop_columns([FORMAT_COLUMN])
    unknown_columns = [c for c in table.column_names if c not in ALLOWED]
    if unknown_columns:
        problems.append(
            f"columns {unknown_columns} cannot be corrected; a correction gives record_id and the new text "
            "(and optionally prompt, answer)"
        )
    if problems:
        raise _error(problems)
    ids = table["record_id"].to_pylist()
    sel = selection.select_records(store, "ids", ids)
    if sel.already_deleted:
        problems.append(
            f"{len(sel.already_deleted)} record id(s) were forgotten (or are being forgotten) by a "
            f"deletion request: {list_some(sel.already_deleted)}"
        )
    if sel.missing:
        problems.append(f"{len(sel.missing)} unknown record id(s): {list_some(sel.missing)}")
    if sel.rectifying:
        problems.append(selection.describe_rectifying(sel))
    new = pa.table(
        {"record_id": table["record_id"], "text": table["text"], "content_sha256": content_sha256(table["text"])}
    )
    for name in ("prompt", "answer"):
        if name in table.column_names:
            new = new.append_column(name, table[name].cast(pa.string()))
    stored_formats = formats(store, sel.rows)
    other = sorted(rid for rid, kind in stored_formats.items() if given_formats.get(rid, TEXT) != kind)
    if other:
        problems.append(
            f"{len(other)} correction(s) are not in the format the record is stored in (a text record is corrected "
            "with `text`, "
            "a prompt-completion record with `prompt` + `completion`, a chat record with `messages`): "
            f"{list_some(other)}"
        )
    stored = sel.rows.select(["record_id", "subject_id", "content_sha256"])
    joined = new.select(["record_id", "content_sha256"]).join(
        stored, "record_id", right_suffix="_stored", join_type="inner"
    )
    same = joined.filter(pc.equal(joined["content_sha256"], joined["content_sha256_stored"]))["record_id"].to_pylist()
    if same:
        problems.append(f"{len(same)} correction(s) give the text the record already has: {list_some(sorted(same))}")
    if "subject_id" in table.column_names:
        given = dict(zip(ids, table["subject_id"].to_pylist(), strict=True))
        moved = sorted(
            r
            for r, s in zip(stored["record_id"].to_pylist(), stored["subject_id"].to_pylist(), strict=True)
            if given.get(r) is not None and given[r] != s
        )
        if moved:
            problems.append(
                f"{len(moved)} correction(s) change the record's subject_id, which a rectification keeps "
                f"(forget the record and ingest it anew): {list_some(moved)}"
            )
    problems.extend(_removed_before(store, new))
    problems.extend(_length_problems(cfg, new, given_formats))
    if problems:
        raise _error(problems)
    return Corrections(new, sel.rows)


def _removed_before(store: Store, new: pa.Table) -> list[str]:
    """Text a rectification removed may not come back through another one: the old request's
    lineage checks (verify, rollback) would then fail on the serving version."""
    ids, gone = new["record_id"].to_pylist(), requests_ledger.forgotten_hashes(store)
    hashes = checkpoints.content_hashes(store, ids, new["content_sha256"].to_pylist())
    again = sorted(rid for rid, h in zip(ids, hashes, strict=True) if h in gone)
    what = "correction(s) give a text an earlier rectification removed from the record"
    return [f"{len(again)} {what}: {list_some(again)}"] if again else []


def _length_problems(cfg: SisaConfig, new: pa.Table, kinds: dict[str, str]) -> list[str]:
    """What `training.truncation` would refuse of the new content when the retrain trains it, as
    `sisa train` refuses such records (sisa/model/lengths.py): said now, before anything changes,
    not by a retrain after the old text was deleted."""
    ids, t = new["record_id"].to_pylist(), cfg.training
    items = [decode(kinds.get(rid, TEXT), text) for rid, text in zip(ids, new["text"].to_pylist(), strict=True)]
    tokenizer, context = load_tokenizer(cfg.model)
    report, encoded = measure_records(tokenizer, items, t.max_length, context, t.loss_on, t.truncation)
    over, empty = disallowed(ids, encoded, t.truncation)
    out = []
    if over:
        out.append(
            f"{len(over)} correction(s) are longer than max_length {report.max_length} tokens and "
            f"training.truncation is refuse: {list_some(sorted(over))} (shorten them, raise training.max_length, "
            "or set training.truncation=cut)"
        )
    if empty:
        out.append(
            f"{len(empty)} correction(s) keep no trained token once cut to max_length {report.max_length} tokens "
            f"(their prompt alone fills it): {list_some(sorted(empty))}"
        )
    return out


def formats(store: Store, rows: pa.Table) -> dict[str, str]:
    """{record_id: stored record_format} of these index rows (the index does not carry the
    format; their slice parts do, null in parts older than formats: text)."""
    wanted = pa.array(rows["record_id"].to_pylist(), pa.string())
    out: dict[str, str] = {}
    for shard, sl in row_slices(rows):
        t = store.read_slice(shard, sl, columns=["record_id", FORMAT_COLUMN])
        if t is None:
            continue
        t = t.filter(pc.is_in(t["record_id"], value_set=wanted))
        out.update(
            (rid, kind or TEXT)
            for rid, kind in zip(t["record_id"].to_pylist(), t[FORMAT_COLUMN].to_pylist(), strict=True)
        )
    return out


def _error(problems: list[str]) -> ValidationError:
    return ValidationError(
        "the corrections cannot be applied; nothing was changed:\n" + "\n".join(f"  - {p}" for p in problems)
    )


def old_and_new(store: Store, fix: Corrections) -> tuple[list[Item], list[str | None], list[tuple[Item, str | None]]]:
    """In memory only, in `fix.ids` order: the records' old content and prompt, and their new
    (content, prompt) (the old prompt when the correction gives none); a prompt-completion or
    chat record's content as its Example, decoded in the format it is stored in."""
    old: dict[str, tuple[Item, str | None, str | None]] = {}
    wanted = set(fix.ids)
    for shard, sl in row_slices(fix.rows):
        t = store.read_slice(shard, sl)
        if t is None:
            continue
        ps = t["prompt"].to_pylist() if "prompt" in t.column_names else [None] * t.num_rows
        kinds = t[FORMAT_COLUMN].to_pylist() if FORMAT_COLUMN in t.column_names else [None] * t.num_rows
        for rid, text, p, kind in zip(t["record_id"].to_pylist(), t["text"].to_pylist(), ps, kinds, strict=True):
            if rid in wanted:
                old[rid] = (decode(kind, text), p, kind)
    new_prompts = fix.new["prompt"].to_pylist() if "prompt" in fix.new.column_names else [None] * fix.new.num_rows
    new = {rid: (text, p) for rid, text, p in zip(fix.ids, fix.new["text"].to_pylist(), new_prompts, strict=True)}
    ids = [i for i in fix.ids if i in old]
    return (
        [old[i][0] for i in ids],
        [old[i][1] for i in ids],
        [(decode(old[i][2], new[i][0]), new[i][1] or old[i][1]) for i in ids],
    )


# -- staging and applying ------------------------------------------------------------------------
def stage(store: Store, request_id: str, fix: Corrections) -> None:
    store.fs.write_parquet(layout.correction_file(request_id), fix.new)


def staged(store: Store, request_id: str) -> pa.Table | None:
    rel = layout.correction_file(request_id)
    return store.fs.read_parquet(rel) if store.fs.exists(rel) else None


def unstage(store: Store, request_id: str) -> None:
    store.fs.delete(layout.correction_file(request_id))


def apply(store: Store, request_id: str, rows: pa.Table) -> int:
    """Rewrite the records' slice parts and index rows with the staged content (idempotent: a
    resumed apply writes the same values). Returns how many records changed."""
    new = staged(store, request_id)
    if new is None:
        return 0
    changed = 0
    for shard_id, slice_idx in row_slices(rows):
        for part in store.slice_parts(shard_id, slice_idx):
            changed += records.replace_values(store.fs, part, new)
    for part in store.index_parts():
        records.replace_values(store.fs, part, new.select(["record_id", "content_sha256"]), INDEX_SCHEMA)
    return changed
