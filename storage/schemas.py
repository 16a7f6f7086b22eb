"""Arrow schemas of everything tabular in a store, as module constants."""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 1

# Columns every record carries in its slice file; the user's own columns follow these.
RECORD_FIELDS = [
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("subject_id", pa.string()),
    pa.field("shard_id", pa.int32(), nullable=False),
    pa.field("slice_idx", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("ingest_id", pa.string(), nullable=False),
    pa.field("ingested_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("content_sha256", pa.string(), nullable=False),
    # text | prompt-completion | chat (sisa/data/formats.py); absent in parts written before it existed
    pa.field("record_format", pa.string()),
]
RECORD_SCHEMA = pa.schema(RECORD_FIELDS)
RECORD_COLUMNS = [f.name for f in RECORD_FIELDS]
PROVENANCE_COLUMNS = ["source", "ingest_id", "ingested_at", "content_sha256"]
# Columns whose values (almost) never repeat: Parquet dictionary encoding is pointless on them.
UNIQUE_COLUMNS = frozenset({"record_id", "text", "content_sha256"})

# The record index: one row per live record, small enough to hold in memory for 1M records.
INDEX_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("subject_id", pa.string()),
        pa.field("shard_id", pa.int32(), nullable=False),
        pa.field("slice_idx", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("ingest_id", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
    ]
)
INDEX_COLUMNS = INDEX_SCHEMA.names

# Record status in the index. Records of a queued request are marked when it is queued: no
# training reads them until its batch has removed them (`forgetting`) or replaced their text
# (`rectifying`, then `live` again).
LIVE = "live"
FORGETTING = "forgetting"
RECTIFYING = "rectifying"
