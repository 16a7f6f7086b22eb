"""Serving a model version: `engine` loads a version's shard adapters on the base and decodes
and scores with their mixture; `batcher` decodes concurrent requests together on one thread;
`bundle` exports a version as a folder that loads without the store; `mirror` keeps MLflow in
step with the version ledger, through `tracking` (the MLflow client) and `mlflow_model` (the
pyfunc each version is logged as). With `serving.engine: vllm`, `vllm_route` routes each request
to its top shard and decodes it on a vLLM server (`vllm_client`), whose adapters `vllm_adapters`
loads and unloads; `vllm_server` starts one on loopback.

Importing this package imports none of them (sisa.lazy): a name loads its submodule on first
use, so MLflow loads only where `Tracker` is used, and the mirror calls the tracking client only
when `tracking.enabled`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sisa.lazy import exports

if TYPE_CHECKING:
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
        torch_threads,
    )
    from sisa.serving.mirror import registered_version_exists
    from sisa.serving.tracking import Tracker
    from sisa.serving.vllm_adapters import VllmAdapters
    from sisa.serving.vllm_client import VllmClient
    from sisa.serving.vllm_route import VllmRoute
    from sisa.serving.vllm_server import VllmServer, vllm_url

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
    "torch_threads",
    "vllm_url",
    "write_bundle",
]

__getattr__, __dir__ = exports(
    __name__,
    {
        "Batcher": "batcher",
        "generate_texts": "bundle",
        "load_bundle": "bundle",
        "read_manifest": "bundle",
        "write_bundle": "bundle",
        "Ensemble": "engine",
        "EnsemblePool": "engine",
        "chat_prompt": "engine",
        "encode_for_scoring": "engine",
        "generate_chat": "engine",
        "generate_many": "engine",
        "generate_text": "engine",
        "load_ensemble": "engine",
        "load_serving": "engine",
        "mean": "engine",
        "one_thread": "engine",
        "recalls": "engine",
        "sample_many": "engine",
        "score_aggregations": "engine",
        "score_records": "engine",
        "scoring_length": "engine",
        "torch_threads": "engine",
        "registered_version_exists": "mirror",
        "VllmAdapters": "vllm_adapters",
        "VllmClient": "vllm_client",
        "VllmRoute": "vllm_route",
        "VllmServer": "vllm_server",
        "vllm_url": "vllm_server",
        "Tracker": "tracking",
    },
)
