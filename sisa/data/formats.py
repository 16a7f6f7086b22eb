"""Record formats: plain text, prompt-completion, and chat (a list of role/content turns).

The conventions users bring from TRL's SFT trainer. A store keeps every record's content in its
`text` column and the format in `record_format`: a text record's text as given, a
prompt-completion or chat record as one canonical JSON object,

    {"prompt": "...", "completion": "..."}
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

so the content hash, the record index, deletion and the leak checks treat all three alike: a
record's bytes live in one column of one row. `decode` turns a stored row back into what the
trainer and the scorers take: a `str` for a text record (encoded exactly as before formats
existed), an `Example` otherwise.

Pure: no torch, no transformers. Validation collects a problem per kind with the lines/rows it
hits and never quotes content (it may be personal data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

TEXT = "text"
PROMPT_COMPLETION = "prompt-completion"
CHAT = "chat"
FORMATS = (TEXT, PROMPT_COMPLETION, CHAT)
ROLES = ("system", "user", "assistant")
MESSAGES_FIELD = "messages"
PROMPT_FIELD = "prompt"
COMPLETION_FIELD = "completion"
FORMAT_COLUMN = "record_format"


@dataclass(frozen=True)
class Example:
    """A prompt-completion or chat record, in memory only. No field shows in its repr: an
    Example must never print its content into a log or an error."""

    format: str
    prompt: str = field(default="", repr=False)
    completion: str = field(default="", repr=False)
    messages: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def contents(self) -> list[str]:
        """Every string the record carries (what a leak check must not find afterwards)."""
        if self.format == CHAT:
            return [c for _, c in self.messages]
        return [self.prompt, self.completion]


Item = str | Example  # what the trainer and the scorers take: a text record's str, or an Example


def detect_format(columns: list[str], text_field: str, wanted: str = "auto") -> tuple[str | None, str | None]:
    """(format, problem): `wanted` when it is not `auto`, else what the columns say.

    `messages` → chat; `prompt` and `completion` → prompt-completion; else text. A `prompt`
    column beside `text` (as `sisa synth` writes) stays a text record's metadata. A table with
    columns of two formats is ambiguous and must name one with `ingest.format`."""
    if wanted != "auto":
        return wanted, None
    found = []
    if MESSAGES_FIELD in columns:
        found.append(CHAT)
    if PROMPT_FIELD in columns and COMPLETION_FIELD in columns:
        found.append(PROMPT_COMPLETION)
    if text_field in columns and found:
        found.append(TEXT)
    if len(found) > 1:
        return (
            None,
            f"columns of more than one record format ({', '.join(found)}); "
            "set ingest.format (or --format) to the one to train",
        )
    return (found[0] if found else TEXT), None


def chat_problem(value: object) -> str | None:
    """Why one row's `messages` value is not a trainable conversation, or None. Names the kind
    of problem and the turn, never the content."""
    if not isinstance(value, list) or not value:
        return "not a non-empty list of turns" if value is not None else "missing messages"
    has_assistant = False
    for t, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            return f"turn {t} is not an object with role and content"
        extra = sorted(k for k, v in turn.items() if k not in ("role", "content") and v is not None)
        if extra:
            return f"turn {t} has keys other than role and content ({', '.join(extra)})"
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            shown = repr(role)[:24] if isinstance(role, str) else type(role).__name__
            return f"turn {t} has an unknown role {shown} (roles: {', '.join(ROLES)})"
        if not isinstance(content, str):
            return f"turn {t} content should be a string, got {type(content).__name__}"
        if not content.strip():
            return f"turn {t} has empty content"
        has_assistant = has_assistant or role == "assistant"
    if not has_assistant:
        return "no assistant turn (nothing to train on)"
    return None


def pair_problem(prompt: object, completion: object) -> str | None:
    for name, v in ((PROMPT_FIELD, prompt), (COMPLETION_FIELD, completion)):
        if v is None:
            return f"missing {name}"
        if not isinstance(v, str):
            return f"{name} should be a string, got {type(v).__name__}"
        if not v.strip():
            return f"empty {name}"
    return None


def encode_chat(messages: list[dict]) -> str:
    """The canonical stored form of a validated conversation (role before content, no spaces)."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    return json.dumps({MESSAGES_FIELD: turns}, ensure_ascii=False, separators=(",", ":"))


def encode_pair(prompt: str, completion: str) -> str:
    return json.dumps({PROMPT_FIELD: prompt, COMPLETION_FIELD: completion}, ensure_ascii=False, separators=(",", ":"))


def decode(record_format: str | None, text: str) -> Item:
    """A stored row as the trainer takes it. A missing format (parts written before formats
    existed) is a text record."""
    if record_format in (None, TEXT):
        return text
    obj = json.loads(text)
    if record_format == PROMPT_COMPLETION:
        return Example(PROMPT_COMPLETION, prompt=obj[PROMPT_FIELD], completion=obj[COMPLETION_FIELD])
    if record_format == CHAT:
        return Example(CHAT, messages=tuple((m["role"], m["content"]) for m in obj[MESSAGES_FIELD]))
    raise ValueError(f"unknown record_format {record_format!r}")


def decode_rows(texts: list[str], record_formats: list[str | None] | None) -> list[Item]:
    if record_formats is None:
        return list(texts)
    return [decode(f, t) for f, t in zip(record_formats, texts, strict=True)]


def contents(item: Item) -> list[str]:
    return [item] if isinstance(item, str) else item.contents()


def table_items(table) -> list[Item]:
    """The records of a normalised or stored Arrow table (`text` and, when present, `record_format`)."""
    kinds = table[FORMAT_COLUMN].to_pylist() if FORMAT_COLUMN in table.column_names else None
    return decode_rows(table["text"].to_pylist(), kinds)
