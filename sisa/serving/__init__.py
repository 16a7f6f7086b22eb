"""Serving a model version: `engine` loads a version's shard adapters on the base and decodes
and scores with their mixture; `batcher` decodes concurrent requests together on one thread;
`bundle` exports a version as a folder that loads without the store; `mirror` keeps MLflow in
step with the version ledger, through `tracking` (the MLflow client) and `mlflow_model` (the
pyfunc each version is logged as). With `serving.engine: vllm`, `vllm_route` routes each request
to its top shard and decodes it on a vLLM server (`vllm_client`), whose adapters `vllm_adapters`
loads and unloads; `vllm_server` starts one on loopback.

Importing this package does not import MLflow: `Tracker` loads on first use, and the mirror
calls the tracking client only when `tracking.enabled`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sisa.serving.batcher import Batcher
from sisa.serving.bundle import generate_texts, load_bundle, read_manifest, write_bundle
from sisa.serving.engine import (
    Ensemble,
    EnsemblePool,
    chat_prompt,
    encode_for_scoring,
    generate_chat,
    generate_many,
    generate_text,
    load_ensemble,
    load_serving,
    mean,
    one_thread,
    recalls,
    sample_many,
    score_aggregations,
    score_records,
    scoring_length,
)
from sisa.serving.mirror import registered_version_exists
from sisa.serving.vllm_adapters import VllmAdapters
from sisa.serving.vllm_client import VllmClient
from sisa.serving.vllm_route import VllmRoute
from sisa.serving.vllm_server import VllmServer, vllm_url

if TYPE_CHECKING:
    from sisa.serving.tracking import Tracker

__all__ = [
    "Batcher",
    "Ensemble",
    "EnsemblePool",
    "Tracker",
    "VllmAdapters",
    "VllmClient",
    "VllmRoute",
    "VllmServer",
    "chat_prompt",
    "encode_for_scoring",
    "generate_chat",
    "generate_many",
    "generate_text",
    "generate_texts",
    "load_bundle",
    "load_ensemble",
    "load_serving",
    "mean",
    "one_thread",
    "read_manifest",
    "recalls",
    "registered_version_exists",
    "sample_many",
    "score_aggregations",
    "score_records",
    "scoring_length",
    "vllm_url",
    "write_bundle",
]


def __getattr__(name: str) -> Any:
    if name == "Tracker":
        from sisa.serving.tracking import Tracker  # MLflow loads only where tracking is used

        return Tracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
