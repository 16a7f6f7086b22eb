"""`sisa synth` people in the three record formats (issue 15): the same facts, as a user would
fine-tune on them.

- text: "Ada Lane works as a pilot." (with `prompt`/`answer` columns, as `make_people` writes)
- prompt-completion: prompt "Ada Lane works as a", completion " pilot."
- chat: the user asks about the person, the assistant answers with the fact
  ("What does Ada Lane do for a living?" → "Ada Lane works as a pilot.")

Built on `synthetic.make_people`'s rows, so the people and facts are the same in every format.
"""

from __future__ import annotations

from sisa.data.formats import CHAT, FORMATS, PROMPT_COMPLETION, TEXT
from sisa.data.synthetic import FACTS

QUESTIONS = {
    "job": "What does {name} do for a living?",
    "city": "Where does {name} live?",
    "phone": "What is {name}'s phone number?",
    "employer": "Where does {name} work?",
    "email": "What is {name}'s email address?",
}
_SUFFIX = {kind: prompt.split("{name}", 1)[1] for kind, prompt, _ in FACTS}


def person_name(row: dict) -> str:
    """The person's name, from a `make_people` row's prompt ("Ada Lane works as a")."""
    suffix = _SUFFIX[row["fact"]]
    return row["prompt"][: len(row["prompt"]) - len(suffix)]


def question(row: dict) -> str:
    return QUESTIONS[row["fact"]].format(name=person_name(row))


def as_format(rows: list[dict], record_format: str) -> list[dict]:
    """`make_people` rows in `record_format` (text returns them as they are)."""
    if record_format not in FORMATS:
        raise ValueError(f"record format should be one of {', '.join(FORMATS)}, got {record_format!r}")
    if record_format == TEXT:
        return [dict(r) for r in rows]
    out = []
    for r in rows:
        base = {"record_id": r["record_id"], "subject_id": r["subject_id"]}
        if record_format == PROMPT_COMPLETION:
            out.append({**base, "prompt": r["prompt"], "completion": r["answer"], "fact": r["fact"]})
        elif record_format == CHAT:
            turns = [{"role": "user", "content": question(r)}, {"role": "assistant", "content": r["text"]}]
            out.append({**base, "messages": turns, "fact": r["fact"]})
    return out
