"""Export the serving version as one merged LoRA adapter, a normal PEFT folder.

    sisa export --config configs/tiny.yaml --out merged-adapter/

The shard adapters are combined with equal weights by peft's `add_weighted_adapter` ("cat":
exact sum of the scaled low-rank updates, rank = sum of the shards' ranks). Weight averaging is
not the same function as the probability ensemble `sisa generate` uses; it is what to ship
when one adapter is required. Load it with `PeftModel.from_pretrained(base, out)`.
"""

from __future__ import annotations

import argparse
import json
import os

from pipelines.common import open_store, print_json
from sisa import adapters, serving
from sisa.config import SisaConfig
from storage.errors import ValidationError


def run(cfg: SisaConfig, out: str) -> dict:
    if os.path.exists(out) and os.listdir(out):
        raise ValidationError(f"--out {out!r} exists and is not empty; choose a new folder")
    v, ens = serving.load_serving(open_store(cfg), cfg)
    names = ens.adapter_names()
    weights = [1.0 / len(names)] * len(names)
    adapters.merge_adapters(ens.model, names, weights, "merged", out)
    info = {"model_version": v.model_version, "shards": {str(k): c for k, c in sorted(v.shards.items())}, "weights": weights, "combination": "cat", "base_model": cfg.model.name}
    with open(os.path.join(out, "sisa_export.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    return {"out": out, **info}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to write the merged adapter into")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, args.out)
    if args.json:
        print_json(res)
    else:
        print(f"exported model version {res['model_version']} ({len(res['shards'])} shard adapters merged) to {res['out']}")
    return 0
