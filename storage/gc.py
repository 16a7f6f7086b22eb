"""Find and remove what a crash can leave behind; none of it is ever read.

- files under tmp/ (staged writes that were never renamed into place),
- data and index parts of an ingest whose ledger entry was never written,
- checkpoint folders without a manifest (an object-store upload cut short).
The caller holds the store lock, so no live writer owns any of them.
"""

from __future__ import annotations

from sisa.storage import layout, records
from sisa.storage.fs import StoreFS


def find_orphans(fs: StoreFS, committed_ingests: set[str]) -> list[str]:
    out = [fs.rel(i.path) for i in fs.list(layout.TMP)]
    for info in fs.list(layout.DATA, recursive=True):
        if info.path.endswith(".parquet") and records.ingest_of_part(info.path) not in committed_ingests:
            out.append(fs.rel(info.path))
    for info in fs.list(layout.INDEX):
        if info.path.endswith(".parquet") and records.ingest_of_part(info.path) not in committed_ingests:
            out.append(fs.rel(info.path))
    for shard_dir in fs.list(layout.CHECKPOINTS):
        for ckpt in fs.list(fs.rel(shard_dir.path)):
            rel = fs.rel(ckpt.path)
            if ckpt.type.name == "Directory" and not fs.exists(f"{rel}/{layout.CHECKPOINT_MANIFEST}"):
                out.append(rel)
    return sorted(out)


def remove(fs: StoreFS, paths: list[str]) -> int:
    total = 0
    for rel in paths:
        total += fs.size(rel)
        fs.delete(rel)
    return total
