"""Generate text from the serving model version: the mixture of every shard's adapter.

    sisa generate --config configs/tiny.yaml --prompt "Ada Lane works as a"
    sisa generate --config configs/tiny.yaml --prompt "..." serving.aggregation=uniform serving.top_shards=1

At each step the next-token distribution mixes the shards' distributions as `serving` says:
`posterior` weighs each shard by how well it explains the prompt and the text so far, `uniform`
takes the plain mean; all shards run in one batched forward (peft's per-row adapter_names).
Greedy by default; --sample draws with a seed. `--bundle DIR` serves a folder written by
`sisa export --format ensemble` instead of the store (it needs no store).

    sisa generate --config configs/tiny.yaml --chat --prompt "Where does Ada Lane live?" [--system "..."]

`--chat` treats the prompt as the user's turn, renders it with the base model's chat template
(the one chat records are trained through) and prints the assistant's reply alone.
"""

from __future__ import annotations

import argparse

from sisa.pipelines.common import print_json
from sisa.storage.errors import ValidationError

from sisa import serving
from sisa.api import ServedModel, SisaStore
from sisa.config import SisaConfig


def run(
    cfg: SisaConfig,
    prompt: str,
    max_new_tokens: int = 32,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    bundle_dir: str | None = None,
    chat: bool = False,
    system: str | None = None,
) -> dict:
    if bundle_dir is not None:
        manifest, ens = serving.load_bundle(bundle_dir)
        model = ServedModel(manifest["model_version"], ens, manifest["serving"]["prior"])
    else:
        model = SisaStore(cfg).model()
    if chat:
        text = model.chat(prompt, system, max_new_tokens, sample, temperature, seed)
    else:
        text = model.generate(prompt, max_new_tokens, sample, temperature, seed)
    return {
        "chat": chat,
        "model_version": model.model_version,
        "shards": model.shards,
        "aggregation": model.ensemble.aggregation,
        "prior": model.prior,
        "top_shards": model.ensemble.top_shards,
        "completion": text,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="text to continue; with --chat, the user's message")
    p.add_argument(
        "--chat",
        action="store_true",
        help="the prompt is a user turn: render it with the base model's chat template and print the assistant's reply",
    )
    p.add_argument("--system", default=None, help="with --chat: a system turn before the user's")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--bundle",
        default=None,
        metavar="DIR",
        help="serve a folder from `sisa export --format ensemble` instead of the store",
    )


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    if args.system and not args.chat:
        raise ValidationError("--system goes with --chat")
    res = run(
        cfg,
        args.prompt,
        args.max_new_tokens,
        args.sample,
        args.temperature,
        args.seed,
        args.bundle,
        args.chat,
        args.system,
    )
    if args.json:
        print_json(res)
    elif args.chat:
        print(res["completion"])
    else:
        print(args.prompt + res["completion"])
    return 0
