"""Every path inside a store is built here, and only here.

store.json                                    format, num_shards, seed, created_at
secret.key                                    salt of every keyed hash (never leaves the store)
signing.key                                   Ed25519 private key that signs certificates (0600; never leaves the store)
LOCK                                          the writer lock (short: metadata, ledgers, versions)
JOBS.LOCK                                     the jobs lock (long: training, retrains, purges, verify)
CURRENT                                       pointer to the serving model version
data/shard=SSSSS/slice=LLLLLL/part-NNNNNN-<ingest_id>.parquet   records of one ingest in one slice
index/part-NNNNNN-<ingest_id>.parquet         record index rows of one ingest
ingests/NNNNNN-<ingest_id>.json               ingest ledger (append-only)
checkpoints/shard=SSSSS/<checkpoint_id>/      adapter + optimizer/RNG state + manifest
versions/vNNNNNN.json                         model version ledger
requests/<request_id>.json                    deletion ledger
corrections/<request_id>.parquet              a rectification's new text, staged until the data holds it
mlflow.db, mlartifacts/                       MLflow (sqlite backend) when tracked under the store
cache/, tmp/, reports/                        derived data; purged with the records they derive from
service/tokens.json, service/audit/*.jsonl    `sisa serve`: token hashes, the append-only audit log (hash-chained)
service/AUDIT.LOCK                            held (flock) while an audit entry is appended, so the chain never forks
"""

from __future__ import annotations

STORE_META = "store.json"
SECRET_KEY = "secret.key"
SIGNING_KEY = "signing.key"
LOCK = "LOCK"
JOBS_LOCK = "JOBS.LOCK"
CURRENT = "CURRENT"
DATA = "data"
INDEX = "index"
INGESTS = "ingests"
CHECKPOINTS = "checkpoints"
VERSIONS = "versions"
REQUESTS = "requests"
CORRECTIONS = "corrections"
CACHE = "cache"
TMP = "tmp"
REPORTS = "reports"
SERVICE = "service"
SERVICE_TOKENS = f"{SERVICE}/tokens.json"
SERVICE_AUDIT = f"{SERVICE}/audit"
SERVICE_AUDIT_LOCK = f"{SERVICE}/AUDIT.LOCK"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
# A checkpoint folder exists once this file is in it (written last); the other file names and
# the checkpoint id format belong to sisa/lineage/checkpoints.py.
CHECKPOINT_MANIFEST = "manifest.json"


def shard_dir(shard_id: int) -> str:
    return f"{DATA}/shard={shard_id:05d}"


def slice_dir(shard_id: int, slice_idx: int) -> str:
    return f"{shard_dir(shard_id)}/slice={slice_idx:06d}"


def part_name(seq: int, ingest_id: str) -> str:
    return f"part-{seq:06d}-{ingest_id}.parquet"


def slice_part(shard_id: int, slice_idx: int, seq: int, ingest_id: str) -> str:
    return f"{slice_dir(shard_id, slice_idx)}/{part_name(seq, ingest_id)}"


def index_part(seq: int, ingest_id: str) -> str:
    return f"{INDEX}/{part_name(seq, ingest_id)}"


def ingest_entry(seq: int, ingest_id: str) -> str:
    return f"{INGESTS}/{seq:06d}-{ingest_id}.json"


def ingest_id_of_entry(path: str) -> str:
    """The ingest id in an ingest entry's file name (`NNNNNN-<ingest_id>.json`)."""
    name = path.rsplit("/", 1)[-1]
    return name[len("000000-") : -len(".json")]


def checkpoints_of_shard(shard_id: int) -> str:
    return f"{CHECKPOINTS}/shard={shard_id:05d}"


def checkpoint_dir(shard_id: int, checkpoint_id: str) -> str:
    return f"{checkpoints_of_shard(shard_id)}/{checkpoint_id}"


def version_entry(model_version: int) -> str:
    return f"{VERSIONS}/v{model_version:06d}.json"


def request_entry(request_id: str) -> str:
    return f"{REQUESTS}/{request_id}.json"


def correction_file(request_id: str) -> str:
    return f"{CORRECTIONS}/{request_id}.parquet"
