"""Export the serving version: one merged LoRA adapter, or the whole ensemble as a folder.

    sisa export --config configs/tiny.yaml --out merged-adapter/
    sisa export --config configs/tiny.yaml --format ensemble --out served-v3/

`merged` (the default) combines the shard adapters with equal weights by peft's
`add_weighted_adapter` ("cat": exact sum of the scaled low-rank updates, rank = sum of the shards'
ranks) into a normal PEFT folder: load it with `PeftModel.from_pretrained(base, out)`. Averaging in
weight space is not the function the served mixture computes, and it keeps little of what the
shards learned (measured on SmolLM2, 32 people x 2 facts: answer-token loss 2.83 at S=4 and 3.92
at S=8 against 0.13 and 0.43 for the posterior mixture; the base model scores 6.8); ship it only
where one adapter is required.

`ensemble` writes what `sisa generate` serves: every shard adapter (peft folders), the manifest with
their sha256s, the aggregation settings and the base model's config and fingerprint
(sisa/serving/bundle.py). It loads without the store:

    from sisa.serving import generate_texts, load_bundle
    manifest, ens = load_bundle("served-v3/")
    generate_texts(ens, ["Ada Lane works as a"], max_new_tokens=8)

or `sisa generate --bundle served-v3/ --prompt "..."`.
"""

from __future__ import annotations

import argparse
import json
import os

from sisa.pipelines.common import open_store, print_json
from sisa.storage.errors import StoreError, ValidationError

from sisa import serving
from sisa.config import SisaConfig
from sisa.lineage import versions
from sisa.model import merge_adapters

FORMATS = ("merged", "ensemble")


def run(cfg: SisaConfig, out: str, fmt: str = "merged") -> dict:
    if fmt not in FORMATS:
        raise ValidationError(f"--format should be one of {', '.join(FORMATS)}, got {fmt!r}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValidationError(f"--out {out!r} exists and is not empty; choose a new folder")
    if fmt == "ensemble":
        return _export_ensemble(cfg, out)
    v, ens = serving.load_serving(open_store(cfg), cfg)
    names = ens.adapter_names()
    weights = [1.0 / len(names)] * len(names)
    merge_adapters(ens.model, names, weights, "merged", out)
    info = {
        "format": "merged",
        "model_version": v.model_version,
        "shards": {str(k): c for k, c in sorted(v.shards.items())},
        "weights": weights,
        "combination": "cat",
        "base_model": cfg.model.name,
    }
    with open(os.path.join(out, "sisa_export.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    return {"out": out, **info}


def _export_ensemble(cfg: SisaConfig, out: str) -> dict:
    store = open_store(cfg)
    v = versions.current(store)
    if v is None:
        raise StoreError("no model version serves yet: run `sisa train` first")
    serving.write_bundle(store, cfg, v, out)
    manifest = serving.read_manifest(out)
    return {
        "out": out,
        "format": "ensemble",
        "model_version": v.model_version,
        "shards": {k: s["checkpoint_id"] for k, s in sorted(manifest["shards"].items())},
        "serving": manifest["serving"],
        "base_model": manifest["model"]["name"],
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="a new (or empty) folder to write into")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="merged",
        help="merged: one PEFT adapter (default); ensemble: "
        "every shard adapter + manifest, served as "
        "`sisa generate` serves",
    )


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, args.out, args.format)
    if args.json:
        print_json(res)
    elif res["format"] == "ensemble":
        print(
            f"exported model version {res['model_version']} ({len(res['shards'])} shard adapters, "
            f"{res['serving']['aggregation']} aggregation) to {res['out']}"
        )
    else:
        print(
            f"exported model version {res['model_version']} ({len(res['shards'])} shard adapters merged) to "
            f"{res['out']}"
        )
    return 0
