"""Print the effective configuration.

sisa config --config configs/tiny.yaml store.uri=/tmp/s          # effective YAML + fingerprints
sisa config --describe                                         # every key, default and help
"""

from __future__ import annotations

import argparse

import yaml
from sisa.pipelines.common import print_json

from sisa.config import SisaConfig, describe_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--describe", action="store_true", help="list every key with its default and help")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    if args.describe:
        print(describe_config())
        return 0
    out = {
        "config": cfg.to_dict(),
        "fingerprint": cfg.fingerprint(),
        "training_fingerprint": cfg.training_fingerprint(),
    }
    if args.json:
        print_json(out)
    else:
        print(yaml.safe_dump(out["config"], sort_keys=False).rstrip())
        print(f"# fingerprint {out['fingerprint']}  training_fingerprint {out['training_fingerprint']}")
    return 0
