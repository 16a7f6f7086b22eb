"""Records measured in tokens against `training.max_length`: never cut in silence.

`measure_records` encodes records once (the same `encode_records` training uses) and reports
their lengths (p50, p95, max) and how many are longer than the effective max_length (the config's,
capped by the model's context); `check_lengths` applies `training.truncation`: `refuse` fails
naming the record ids over max_length, `cut` fails only for records whose cut would leave nothing
to train; `disallowed` names those ids for a caller that reports them its own way (a
rectification checks its new content at filing). `model_max_length` is the cap every path that
trains encodes at. Only counts and ids leave this module, never text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pyarrow.compute as pc

from sisa.config import SisaConfig
from sisa.data.formats import FORMAT_COLUMN, PROMPT_COMPLETION, Item, table_items
from sisa.model.base import TextTokenizer, load_tokenizer, model_context
from sisa.model.chat import render_chat_text
from sisa.model.loss import EncodedRecord, encode_records
from sisa.storage.errors import ValidationError, list_some
from sisa.storage.store import Store


@dataclass(frozen=True)
class LengthReport:
    """Token lengths of a set of records (counts only) and how max_length treats them."""

    records: int
    p50: int
    p95: int
    max: int
    max_length: int  # what records are cut to: training.max_length capped by the model's context
    configured_max_length: int
    context: int | None  # the model's max_position_embeddings
    over: int  # records longer than max_length
    truncation: str  # cut | refuse

    @property
    def capped(self) -> bool:
        return self.max_length < self.configured_max_length

    def to_dict(self) -> dict[str, int | str | bool | None]:
        return {**asdict(self), "capped": self.capped}

    def metrics(self) -> dict[str, float]:
        """What MLflow logs (`length_*`): numbers only."""
        keys = ("records", "p50", "p95", "max", "max_length", "over")
        return {f"length_{k}": float(getattr(self, k)) for k in keys}

    def describe(self) -> str:
        """One line for people: the lengths, the cap when it applies, and what happens to long records."""
        line = f"record lengths in tokens: p50 {self.p50}, p95 {self.p95}, max {self.max} ({self.records} records)"
        limit = f"max_length {self.max_length}"
        if self.capped:
            limit = (
                f"max_length {self.max_length} (training.max_length {self.configured_max_length} capped at the "
                "model's context)"
            )
        if not self.over:
            return f"{line}; none over {limit}"
        what = (
            "training cuts them, keeping their start (training.truncation: cut)"
            if self.truncation == "cut"
            else "training refuses them (training.truncation: refuse)"
        )
        return f"{line}; {self.over} over {limit}: {what}"


def effective_max_length(max_length: int, context: int | None) -> int:
    """`training.max_length` capped by the model's context (a record can be no longer)."""
    return min(max_length, context) if context else max_length


def model_max_length(max_length: int, model) -> int:
    """`training.max_length` capped by this loaded model's context: the length every path that
    trains on records encodes them at (the shard jobs, the NPO and edit bridges)."""
    return effective_max_length(max_length, model_context(model))


def length_report(
    lengths: Sequence[int], max_length: int, context: int | None = None, truncation: str = "cut"
) -> LengthReport:
    """The report of these lengths (nearest-rank percentiles) against max_length capped by context."""
    limit = effective_max_length(max_length, context)
    ordered = sorted(lengths)

    def rank(q: float) -> int:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else 0

    over = sum(1 for n in ordered if n > limit)
    return LengthReport(len(ordered), rank(0.5), rank(0.95), rank(1.0), limit, max_length, context, over, truncation)


def measure_records(
    tokenizer: TextTokenizer,
    items: Sequence[Item],
    max_length: int,
    context: int | None,
    loss_on: str = "completion",
    truncation: str = "cut",
) -> tuple[LengthReport, list[EncodedRecord]]:
    """Encode `items` as training will (cut to the effective max_length) and report their lengths."""
    encoded = encode_records(tokenizer, items, effective_max_length(max_length, context), loss_on)
    return length_report([r.length for r in encoded], max_length, context, truncation), encoded


def record_lengths(tokenizer: TextTokenizer, items: Sequence[Item]) -> list[int]:
    """Each record's full length in tokens, as `encode_records` counts it, the cheap way: every
    record rendered once and the batch tokenized at once (no trained-token spans)."""
    texts: list[str] = []
    special: list[bool] = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
            special.append(True)
        elif item.format == PROMPT_COMPLETION:
            texts.append(item.prompt + item.completion)
            special.append(True)
        else:
            texts.append(render_chat_text(tokenizer, item.messages))
            special.append(False)
    out = [0] * len(texts)
    for flag in (True, False):
        idx = [i for i, f in enumerate(special) if f is flag]
        if idx:
            ids = tokenizer([texts[i] for i in idx], add_special_tokens=flag, padding=False)["input_ids"]
            for i, row in zip(idx, ids, strict=True):
                out[i] = len(row) + int(flag)  # eos after a text or a completion; a template writes its own
    return out


def ingest_lengths(store: Store, cfg: SisaConfig, ingest_id: str, slices: Sequence[str]) -> LengthReport:
    """The token lengths of one ingest's records (`slices`: its "shard/slice" keys), measured with
    the base model's tokenizer and chat template (no weights load) as `sisa train` will see them."""
    items: list[Item] = []
    for key in slices:
        shard, sl = (int(x) for x in key.split("/"))
        table = store.read_slice(shard, sl, columns=["text", FORMAT_COLUMN, "ingest_id"])
        if table is not None:
            items.extend(table_items(table.filter(pc.equal(table["ingest_id"], ingest_id))))
    tokenizer, context = load_tokenizer(cfg.model)
    return length_report(record_lengths(tokenizer, items), cfg.training.max_length, context, cfg.training.truncation)


def disallowed(
    record_ids: Sequence[str], encoded: Sequence[EncodedRecord], truncation: str
) -> tuple[list[str], list[str]]:
    """The ids `training.truncation` does not let train: (over max_length, when it is refuse; cut
    to no trained token, under either). `encoded`: the records as `measure_records` encodes them."""
    pairs = list(zip(record_ids, encoded, strict=True))
    over = [rid for rid, r in pairs if r.cut] if truncation == "refuse" else []
    return over, [rid for rid, r in pairs if r.cut and not any(r.trained)]


def check_lengths(record_ids: Sequence[str], encoded: Sequence[EncodedRecord], report: LengthReport) -> None:
    """Refuse, naming record ids (never text), what `training.truncation` does not allow.

    refuse: every record over max_length. cut: records whose cut leaves no trained token (a prompt
    that fills max_length alone): they would train nothing."""
    over, empty = disallowed(record_ids, encoded, report.truncation)
    if over:
        raise ValidationError(
            f"{len(over)} record(s) are longer than max_length {report.max_length} tokens and "
            f"training.truncation is refuse: {list_some(over)}; nothing was trained. Raise training.max_length "
            f"(longest record: {report.max} tokens{_context_note(report)}), shorten or forget these records, "
            "or set training.truncation=cut"
        )
    if empty:
        raise ValidationError(
            f"{len(empty)} record(s) keep no trained token once cut to max_length {report.max_length}: their prompt "
            f"alone fills it: {list_some(empty)}; nothing was trained. Raise training.max_length "
            f"(longest record: {report.max} tokens{_context_note(report)}), set training.loss_on=all, or shorten "
            "or forget these records"
        )


def _context_note(report: LengthReport) -> str:
    return f"; the model's context: {report.context}" if report.context else ""
