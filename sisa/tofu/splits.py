"""TOFU's data: the copy sisa ships (`sisa/tofu/data/`, MIT, CMU Locus Lab), or the dataset by its
Hugging Face name for users who have the hub, and the splits and chat records built from it.

The shipped files are TOFU's six base configs, gzipped; every read checks the sha256 of the
uncompressed bytes against the table below (the one in `data/SOURCE.md`). The configs TOFU derives
from them (`forget01`, `forget05_perturbed`, `retain90`, ...) are cut here the way TOFU cuts
them: the forget splits are the last 2 / 10 / 20 authors, the retain splits everything before.
From the hub (or a local folder of its files) each config is read as it is published; the
`index` and `author` fields the shipped copy adds are added where a row lacks them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path

from sisa.data.sources import read_hub_dataset
from sisa.storage.errors import IntegrityError, ValidationError

HUB_NAME = "locuslab/TOFU"
DATA_DIR = Path(__file__).resolve().parent / "data"
AUTHORS = 200  # fictitious authors in `full`, 0-199, in order
PER_AUTHOR = 20  # question / answer pairs per author
HOLDOUT_FIRST_AUTHOR = 200  # holdout10's authors are numbered 200-219

# The shipped files: config → sha256 of the uncompressed JSONL.
FILES = {
    "full": "77ba0904f03cb88d5ea77b897544904e9b9a720fe968795a71e4d4c647ee9ae1",
    "forget10_perturbed": "1e5c94fe3929d8e06984fe7a151051fbb9cea33989a1be3c427b95d8601bf1fc",
    "retain_perturbed": "6d9f489a22b275ed34c20a94b25c852f47f2f1a83dca9e110b2c957a1937cd5c",
    "real_authors_perturbed": "0373b0dd3698c8b347cefbb98cd2a104bb7aa77f1404beca7aefdf7d72977a1b",
    "world_facts_perturbed": "a81aeee4791738ea6c24d4a5d55e549d22862ba17e6d667fb1cf5897c2143e40",
    "holdout10": "dd617506c10c75e68ffa993437666fcaf3f1fce797cd1948fd86ad9536b3621a",
}
# forget split → how many of the last authors it holds
FORGET_SPLITS = {"forget01": 2, "forget05": 10, "forget10": 20}
RETAIN_SPLITS = {"retain99": "forget01", "retain95": "forget05", "retain90": "forget10"}
CONFIGS = (
    *FILES,
    *FORGET_SPLITS,
    *(f"{s}_perturbed" for s in FORGET_SPLITS if s != "forget10"),
    *RETAIN_SPLITS,
)


def _first_index(config: str) -> int:
    """The row of `full` a config's first row is (0 for configs that are not cut from it)."""
    split = config.removesuffix("_perturbed")
    if split in FORGET_SPLITS:
        return (AUTHORS - FORGET_SPLITS[split]) * PER_AUTHOR
    return 0


@functools.lru_cache(maxsize=8)
def _read_packaged_file(config: str) -> tuple[dict, ...]:
    path = DATA_DIR / f"{config}.jsonl.gz"
    data = gzip.decompress(path.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != FILES[config]:
        raise IntegrityError(
            f"{path} is not the TOFU file sisa ships: sha256 {digest}, expected {FILES[config]}; "
            "restore it from a fresh clone"
        )
    return tuple(json.loads(line) for line in data.splitlines() if line.strip())


def _packaged(config: str) -> list[dict]:
    if config in FILES:
        return [dict(r) for r in _read_packaged_file(config)]
    split = config.removesuffix("_perturbed")
    if split in FORGET_SPLITS:
        source = "forget10_perturbed" if config.endswith("_perturbed") else "full"
        rows = _packaged(source)
        return rows[len(rows) - FORGET_SPLITS[split] * PER_AUTHOR :]
    forget = FORGET_SPLITS[RETAIN_SPLITS[config]]
    return _packaged("full")[: (AUTHORS - forget) * PER_AUTHOR]


def _with_index(config: str, rows: list[dict]) -> list[dict]:
    """The shipped copy's `index` and `author` fields on rows read from the hub."""
    first = _first_index(config)
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        row.setdefault("index", first + i)
        if config == "holdout10":
            row.setdefault("author", HOLDOUT_FIRST_AUTHOR + i // PER_AUTHOR)
        elif config not in ("real_authors_perturbed", "world_facts_perturbed"):
            row.setdefault("author", row["index"] // PER_AUTHOR)
        out.append(row)
    return out


def read_config(config: str, source: str | None = None) -> list[dict]:
    """The rows of one TOFU config. `source` None reads the copy sisa ships (sha256-checked);
    a hub name (`locuslab/TOFU`) or a local folder of the config files goes through `datasets`."""
    if config not in CONFIGS:
        raise ValidationError(f"TOFU config should be one of {', '.join(CONFIGS)}, got {config!r}")
    if source is None:
        return _packaged(config)
    return _with_index(config, read_hub_dataset(source, config).to_pylist())


def forget_authors(split: str) -> list[int]:
    """The authors a forget split holds (the last ones of `full`)."""
    if split not in FORGET_SPLITS:
        raise ValidationError(f"TOFU forget split should be one of {', '.join(FORGET_SPLITS)}, got {split!r}")
    return list(range(AUTHORS - FORGET_SPLITS[split], AUTHORS))


def record_id(index: int) -> str:
    return f"tofu-{index:04d}"


def subject_id(author: int) -> str:
    return f"tofu-author-{author:03d}"


def chat_record(row: dict) -> dict:
    """One QA pair as sisa's chat record: the user asks the question, the assistant answers;
    subject = the author, so one author's 20 records share a shard."""
    return {
        "record_id": record_id(int(row["index"])),
        "subject_id": subject_id(int(row["author"])),
        "messages": [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ],
    }
