"""What a crash leaves behind (storage/gc.py): staged temp files, the parts of an ingest that was
never committed, checkpoint folders without a manifest; found, sized and removed, and nothing
committed is touched."""

from __future__ import annotations

import pyarrow as pa
from sisa.storage import gc, layout, records
from sisa.storage.fs import StoreFS


def test_orphans_are_found_and_removed_and_committed_files_stay(tmp_path):
    fs = StoreFS(str(tmp_path / "s"))
    table = pa.table({"record_id": ["r1", "r2"], "text": ["a", "b"]})
    kept = [
        records.write_part(fs, 0, 0, 1, "done", table),
        layout.index_part(1, "done"),
        f"{layout.checkpoint_dir(0, 's00000-l000000-aaaa')}/{layout.CHECKPOINT_MANIFEST}",
    ]
    fs.write_parquet(kept[1], table)
    fs.write_json(kept[2], {"checkpoint_id": "s00000-l000000-aaaa"})
    crashed = [records.write_part(fs, 1, 0, 2, "crashed", table), layout.index_part(2, "crashed")]
    fs.write_parquet(crashed[1], table)
    half = layout.checkpoint_dir(1, "s00001-l000000-bbbb")
    fs.write_bytes(f"{half}/adapter_model.safetensors", b"weights")
    fs.write_bytes(f"{layout.TMP}/x.tmp", b"staged")
    orphans = gc.find_orphans(fs, {"done"})
    assert orphans == sorted([*crashed, half, f"{layout.TMP}/x.tmp"])
    size = sum(fs.size(p) for p in orphans)
    assert gc.remove(fs, orphans) == size > 0
    assert gc.find_orphans(fs, {"done"}) == []
    assert all(fs.exists(p) for p in kept) and not any(fs.exists(p) for p in orphans)
