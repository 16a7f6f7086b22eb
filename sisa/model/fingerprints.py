"""The sha256 digests that name what a checkpoint was trained with: a model's weights, a folder
of weight files, and a tokenizer's rules (vocabulary, special tokens, chat template).

`base_model_fingerprint` (sisa/model/base.py) names a base with these; a converted SmolLM2 folder
carries its digest in `FINGERPRINT_FILE`, so later loads need not hash it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sisa.model.base import TextTokenizer

FINGERPRINT_FILE = "sisa_fingerprint.json"
# Weight files hashed for a user's folder; config.json is included because it changes the model.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def tokenizer_fingerprint(tokenizer: TextTokenizer) -> str:
    """A sha256 of what turns a record into token ids: the vocabulary and its rules, the special
    tokens and the chat template. The base fingerprint names the weights only; a checkpoint records
    this one too, so training never continues from a checkpoint whose records were tokenized or
    rendered differently (a replaced chat template, an edited tokenizer.json)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    special = {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    h = hashlib.sha256()
    template = getattr(tokenizer, "chat_template", None)
    for part in (rules, json.dumps(special, sort_keys=True), json.dumps(template, sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def state_dict_digest(model: torch.nn.Module) -> str:
    """A sha256 of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def folder_digest(folder: Path, cache_dir: Path) -> str:
    """Hash a user's weight files without loading the model (a 7B model need not fit in RAM to
    be named); reuse the digest while the files' sizes and mtimes are unchanged."""
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json")
    )
    stat = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    cached = cache_dir / "fingerprints" / f"{key}.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        if data.get("files") == stat:
            return data["fingerprint"]
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\n".encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    digest = h.hexdigest()
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_json(cached, {"fingerprint": digest, "folder": str(folder.resolve()), "files": stat})
    return digest


def write_json(path: Path, obj: dict) -> None:
    """Written to a temporary sibling and renamed into place: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)
