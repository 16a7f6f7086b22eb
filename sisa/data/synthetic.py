"""Deterministic fictitious people, for the demo, tests and benchmarks (faker, seeded).

Each person becomes a few one-sentence records with `subject_id` = the person, e.g.
"Ada Lane works as a pilot." Each record also carries `prompt` and `answer` (the sentence cut
before the fact) so memorization can be measured on the answer tokens only: a stranger's name is
unfamiliar too, so loss over the whole sentence would blur the signal.
"""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [
    ("job", "{name} works as a", " {job}."),
    ("city", "{name} lives in", " {city}."),
    ("phone", "{name}'s phone number is", " {phone}."),
    ("employer", "{name} works at", " {company}."),
    ("email", "{name}'s email is", " {email}."),
]


def make_people(n: int, seed: int = 0, facts_per_person: int = 2, start: int = 0) -> list[dict]:
    """`n` people (ids p{start}..), `facts_per_person` records each, identical for the same args."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed * 1_000_003 + start)
    rows = []
    for i in range(start, start + n):
        person = {
            "name": fake.name(),
            "job": fake.job().split(",")[0].lower(),
            "city": fake.city(),
            "phone": f"{fake.random_int(200, 999)}-{fake.random_int(100, 999)}-{fake.random_int(1000, 9999)}",
            "company": fake.company(),
            "email": "",
        }
        person["email"] = f"{person['name'].split()[0].lower()}.{fake.random_int(10, 99)}@{fake.free_email_domain()}"
        subject = f"person-{i:05d}"
        for kind, prompt, answer in FACTS[:facts_per_person]:
            p, a = prompt.format(**person), answer.format(**person)
            rows.append(
                {
                    "record_id": f"{subject}-{kind}",
                    "subject_id": subject,
                    "text": p + a,
                    "prompt": p,
                    "answer": a,
                    "fact": kind,
                }
            )
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- probes (`sisa synth --probes`): the same facts asked other ways ------------------------------
PARAPHRASES = {
    "job": ["{name} is employed as a", "By trade, {name} works as a"],
    "city": ["{name} resides in", "{name}'s home is in"],
    "phone": ["The phone number of {name} is", "{name} can be reached by phone at"],
    "employer": ["{name} is employed at", "{name}'s employer is"],
    "email": ["The email address of {name} is", "{name} can be emailed at"],
}
QUESTIONS = {
    "job": "Question: What does {name} do for a living? Answer: a",
    "city": "Question: In which city does {name} live? Answer:",
    "phone": "Question: What is {name}'s phone number? Answer:",
    "employer": "Question: Which company does {name} work for? Answer:",
    "email": "Question: What is {name}'s email address? Answer:",
}


def make_probes(rows: list[dict]) -> list[dict]:
    """Probes for the facts of `make_people` rows: two `paraphrase`s and one `related` question per
    fact, and the fact's own prompt as a `locality` probe (it counts for requests about others)."""
    templates = {kind: prompt for kind, prompt, _ in FACTS}
    out = []
    for r in rows:
        kind = r.get("fact")
        if kind not in templates:
            continue
        suffix = templates[kind].replace("{name}", "")
        name = r["prompt"][: -len(suffix)]
        for template in PARAPHRASES[kind]:
            out.append(
                {
                    "prompt": template.format(name=name),
                    "answer": r["answer"],
                    "kind": "paraphrase",
                    "subject_id": r["subject_id"],
                }
            )
        out.append(
            {
                "prompt": QUESTIONS[kind].format(name=name),
                "answer": r["answer"],
                "kind": "related",
                "subject_id": r["subject_id"],
            }
        )
        out.append({"prompt": r["prompt"], "answer": r["answer"], "kind": "locality", "subject_id": r["subject_id"]})
    return out
