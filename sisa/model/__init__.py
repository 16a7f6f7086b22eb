"""The model side of SISA: the frozen base, the shards' LoRA adapters, and their mixture.

`base` loads the base model and its tokenizer (tiny, SmolLM2 or a local HF folder) and names it
(`base_model_fingerprint`); `gguf` converts SmolLM2's GGUF file into a plain HF model;
`fingerprints` holds the digests of weights, weight folders and tokenizers; `chat` renders chat
records with the tokenizer's template; `loss` turns records into token batches and computes
their losses; `lengths` measures records in tokens against `training.max_length`;
`adapters` attaches, saves, loads and merges the LoRA adapters (peft);
`mixture` serves the shards' adapters as one distribution (the SISA aggregation);
`token_cache` keeps each shard's token log-probs per text for a run that scores several versions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sisa.lazy import exports

if TYPE_CHECKING:
    from sisa.model.adapters import attach_lora, merge_adapters, trainable_parameters
    from sisa.model.base import (
        TextTokenizer,
        base_model_fingerprint,
        base_model_folder,
        load_base_model,
        select_device,
        select_dtype,
    )
    from sisa.model.chat import render_chat, render_chat_prompt
    from sisa.model.fingerprints import tokenizer_fingerprint
    from sisa.model.lengths import LengthReport, ingest_lengths
    from sisa.model.loss import EncodedRecord, collate, encode_records, encode_texts, sequence_losses, token_logprobs
    from sisa.model.mixture import aggregated_sequence_losses, generate

__all__ = [
    "EncodedRecord",
    "LengthReport",
    "TextTokenizer",
    "aggregated_sequence_losses",
    "attach_lora",
    "base_model_fingerprint",
    "base_model_folder",
    "collate",
    "encode_records",
    "encode_texts",
    "generate",
    "ingest_lengths",
    "load_base_model",
    "merge_adapters",
    "render_chat",
    "render_chat_prompt",
    "select_device",
    "select_dtype",
    "sequence_losses",
    "token_logprobs",
    "tokenizer_fingerprint",
    "trainable_parameters",
]

__getattr__, __dir__ = exports(
    __name__,
    {
        "attach_lora": "adapters",
        "merge_adapters": "adapters",
        "trainable_parameters": "adapters",
        "TextTokenizer": "base",
        "base_model_fingerprint": "base",
        "base_model_folder": "base",
        "load_base_model": "base",
        "select_device": "base",
        "select_dtype": "base",
        "render_chat": "chat",
        "render_chat_prompt": "chat",
        "tokenizer_fingerprint": "fingerprints",
        "LengthReport": "lengths",
        "ingest_lengths": "lengths",
        "EncodedRecord": "loss",
        "collate": "loss",
        "encode_records": "loss",
        "encode_texts": "loss",
        "sequence_losses": "loss",
        "token_logprobs": "loss",
        "aggregated_sequence_losses": "mixture",
        "generate": "mixture",
    },
)
