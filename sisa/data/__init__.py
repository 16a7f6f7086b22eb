"""Records in: the three record formats, reading sources, validation and provenance, shard and
slice assignment, the store a config opens, and the synthetic people of the demo and tests.
"""

from sisa.data import formats, ingestion, sharding, sources, synthetic, synthetic_formats
from sisa.data.formats import CHAT, FORMATS, TEXT, Example, table_items
from sisa.data.ingestion import IngestResult, ingest_sources, normalise
from sisa.data.opening import open_store
from sisa.data.sharding import assign_shards, shard_key
from sisa.data.sources import Source, from_dataset, from_table, read_source
from sisa.data.synthetic import make_people, make_probes, write_jsonl
from sisa.data.synthetic_formats import as_format, question

__all__ = [
    "CHAT",
    "Example",
    "FORMATS",
    "IngestResult",
    "Source",
    "TEXT",
    "as_format",
    "assign_shards",
    "formats",
    "from_dataset",
    "from_table",
    "ingest_sources",
    "ingestion",
    "make_people",
    "make_probes",
    "normalise",
    "open_store",
    "question",
    "read_source",
    "shard_key",
    "sharding",
    "sources",
    "synthetic",
    "synthetic_formats",
    "table_items",
    "write_jsonl",
]
