"""Write a JSONL file of fictitious people to try sisa on (deterministic; faker).

    sisa synth --people 40 --facts 2 --out people.jsonl [--probes probes.jsonl]
    sisa synth --people 40 --format chat --out chats.jsonl

--format picks the record format: text ("Ada Lane works as a pilot.", with `prompt` and `answer`
columns for answer-only scoring), prompt-completion ("Ada Lane works as a" → " pilot.") or chat
(the user asks about the person, the assistant answers). The people are the same in every format.
--probes also writes, for every fact, two paraphrases and a question (`paraphrase`, `related`)
and the fact's own prompt (`locality`): the evidence file of `sisa forget/rectify --probes`.
"""

from __future__ import annotations

import argparse

from sisa.config import SisaConfig
from sisa.data import FORMATS, as_format, make_people, make_probes, write_jsonl


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--people", type=int, default=40, help="how many people (default 40)")
    p.add_argument(
        "--facts", type=int, default=2, choices=range(1, 6), metavar="1..5", help="records per person (default 2)"
    )
    p.add_argument("--seed", type=int, default=0, help="faker seed (default 0)")
    p.add_argument("--start", type=int, default=0, help="first person number, to make disjoint files (default 0)")
    p.add_argument("--out", default="people.jsonl", help="output JSONL path (default people.jsonl)")
    p.add_argument(
        "--format", default="text", choices=FORMATS, help="record format: text (default), prompt-completion or chat"
    )
    p.add_argument(
        "--probes", metavar="PATH", help="also write probes for these people (paraphrase, related, locality) to PATH"
    )


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    people = make_people(args.people, args.seed, args.facts, args.start)
    rows = as_format(people, args.format)
    path = write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} {args.format} records about {args.people} fictitious people to {path}")
    if args.probes:
        probes = make_probes(people)  # from the facts, whatever the format
        write_jsonl(probes, args.probes)
        print(f"wrote {len(probes)} probes (paraphrase, related, locality) to {args.probes}")
    return 0
