"""Generate text from the serving model version: the ensemble of every shard's adapter.

    sisa generate --config configs/tiny.yaml --prompt "Ada Lane works as a"

At each step the next-token distribution is the mean of the shards' distributions, computed in
one batched forward (peft's per-row adapter_names). Greedy by default; --sample draws with a seed.
"""

from __future__ import annotations

import argparse

from pipelines.common import open_store, print_json
from sisa import aggregate, serving
from sisa.config import SisaConfig


def run(cfg: SisaConfig, prompt: str, max_new_tokens: int = 32, sample: bool = False, temperature: float = 1.0, seed: int = 0) -> dict:
    v, ens = serving.load_serving(open_store(cfg), cfg)
    text = aggregate.generate(ens.model, ens.tokenizer, ens.adapter_names(), prompt, max_new_tokens, not sample, temperature, seed)
    return {"model_version": v.model_version, "shards": sorted(ens.names), "completion": text}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, args.prompt, args.max_new_tokens, args.sample, args.temperature, args.seed)
    if args.json:
        print_json(res)
    else:
        print(args.prompt + res["completion"])
    return 0
