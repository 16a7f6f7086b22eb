"""The `sisa` command: `sisa <verb> --config FILE [key.sub=value ...]`.

Each verb lives in its own pipeline module, named as the verb (`requests` is list_requests.py: a
module named `requests` would shadow the HTTP library), with `add_arguments(parser)` and `cli(cfg, args)`.
Errors a user can cause print one clear message and exit non-zero; tracebacks are for our bugs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import warnings

from sisa.storage.errors import SisaError

from sisa import offline

# verb → (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "ingest": ("sisa.pipelines.ingest", "validate and ingest records (JSONL, CSV, Parquet, HF dataset folders)"),
    "status": ("sisa.pipelines.status", "records per shard and slice, ingest batches, store size"),
    "train": ("sisa.pipelines.train", "train pending slices of every shard (Ray) and commit a model version"),
    "forget": (
        "sisa.pipelines.forget",
        "forget records exactly (by id, subject, source or ingest), with optional fast path",
    ),
    "rectify": (
        "sisa.pipelines.rectify",
        "correct records' text exactly: old content forgotten, new content trained, certificate",
    ),
    "process": (
        "sisa.pipelines.process",
        "carry out every queued request (deletions, rectifications) in one batch (--due: only when the policy says so)",
    ),
    "approve": (
        "sisa.pipelines.approve",
        "approve a request that waits for approvers (four eyes; never its requester), then carry it out",
    ),
    "reject": ("sisa.pipelines.reject", "reject a request that waits for approvers, with a reason; nothing changes"),
    "requests": ("sisa.pipelines.list_requests", "list deletion requests, their status and deadlines"),
    "certificate": (
        "sisa.pipelines.certificate",
        "print the evidence of one completed deletion request; `verify FILE --public-key KEY` checks one offline",
    ),
    "keys": ("sisa.pipelines.keys", "export the public key that checks this store's signed certificates"),
    "audit": ("sisa.pipelines.audit", "verify the audit log's hash chain and the certificates anchoring it"),
    "rollback": ("sisa.pipelines.rollback", "serve an earlier model version, unless deleted data is in its lineage"),
    "versions": ("sisa.pipelines.versions", "list model versions"),
    "generate": ("sisa.pipelines.generate", "generate text with the serving version (mixture of shard adapters)"),
    "eval": ("sisa.pipelines.eval", "loss and perplexity of both aggregations and of each shard on a file"),
    "export": (
        "sisa.pipelines.export",
        "export the serving version: one merged PEFT adapter, or --format ensemble (every shard adapter + manifest)",
    ),
    "verify": (
        "sisa.pipelines.verify",
        "re-check lineage, purge and integrity; --replay proves exactness by retraining",
    ),
    "gc": ("sisa.pipelines.gc", "remove temp files and half-written leftovers of crashes"),
    "serve": (
        "sisa.pipelines.serve",
        "HTTP service: deletion requests and rectifications with roles, OpenAI-compatible completions, the audit page",
    ),
    "token": ("sisa.pipelines.token", "create, list or revoke the bearer tokens of `sisa serve`"),
    "demo": ("sisa.pipelines.demo", "the whole story: train on people, forget one, prove it, write a report"),
    "synth": ("sisa.pipelines.synth", "write a JSONL file of fictitious people to try sisa on"),
    "config": ("sisa.pipelines.config", "print the effective config, its fingerprint, or every key with its help"),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; given `verb`, only that verb's module is imported.

    A verb's module imports its libraries (torch, peft, Ray, MLflow: seconds), so `sisa ingest`
    must not pay for `sisa train`; the other verbs get their one-line help only.
    """
    parser = argparse.ArgumentParser(
        prog="sisa",
        description="Exact machine unlearning for LoRA-fine-tuned language models (SISA).",
        usage="sisa VERB [--config FILE] [key.sub=value ...] [options]",
        epilog="Every verb takes --config FILE and dotted overrides such as store.uri=/tmp/s sharding.num_shards=8. "
        "`sisa config --describe` lists every key.",
    )
    parser.add_argument("--version", action="version", version=f"sisa {package_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name, (module, help_text) in VERBS.items():
        # prog: each verb's usage line starts `sisa VERB` (argparse would prefix the top usage)
        if verb is not None and name != verb:
            sub.add_parser(name, help=help_text, description=help_text, prog=f"sisa {name}")
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(
            name,
            help=help_text,
            description=(mod.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            prog=f"sisa {name}",
        )
        p.add_argument(
            "--config",
            "-c",
            metavar="FILE",
            help="YAML config, or a shipped config's name (tiny, demo, base); defaults apply when omitted",
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
        mod.add_arguments(p)
        p.usage = p.format_usage().removeprefix("usage: ").rstrip() + " [key.sub=value ...]"
    return parser


def package_version() -> str:
    """The installed distribution's version (`sisa --version`)."""
    import sisa

    return sisa.__version__


OVERRIDE = re.compile(r"^[a-z_]+\.[a-z_]+=")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """`section.key=value` tokens are config overrides wherever they stand; the rest is argparse's."""
    overrides = [a for a in argv if OVERRIDE.match(a)]
    return [a for a in argv if not OVERRIDE.match(a)], overrides


# library → the extra of pyproject.toml that installs it, for the verbs that need one.
EXTRAS = {"fastapi": "serve", "starlette": "serve", "uvicorn": "serve", "pydantic": "serve", "matplotlib": "demo"}


def missing_extra(verb: str, e: ModuleNotFoundError) -> int:
    """A verb whose optional libraries are not installed: say which extra installs them (exit 2);
    any other missing module is our bug and raises."""
    extra = EXTRAS.get((e.name or "").split(".")[0])
    if extra is None:
        raise e
    print(f"sisa {verb}: error: this needs {e.name}: pip install 'sisa[{extra}]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    offline.apply()
    # Library deprecation chatter is not for our users; our own messages go through print.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    verb = next((a for a in rest if a in VERBS), "")
    try:
        parser = build_parser(verb)
    except ModuleNotFoundError as e:
        return missing_extra(verb, e)
    args = parser.parse_args(rest)
    args.overrides = overrides
    module = importlib.import_module(VERBS[args.verb][0])
    code = _run_verb(module, args)
    if argv is None:  # this process is the `sisa` command (tests call main(argv) in their own)
        _stop_ray(code)
    return code


def _run_verb(module, args: argparse.Namespace) -> int:
    try:
        from sisa.config import load_config

        extra = module.overrides_from(args) if hasattr(module, "overrides_from") else []
        cfg = load_config(args.config, list(args.overrides) + extra)
        return module.cli(cfg, args) or 0
    except SisaError as e:
        print(f"sisa {args.verb}: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:  # an optional library a verb loads when it runs
        return missing_extra(args.verb, e)
    except KeyboardInterrupt:
        print(f"sisa {args.verb}: interrupted", file=sys.stderr)
        return 130


# How long the embedded Ray may take to stop once a verb is done (it takes about a second).
RAY_STOP_S = 30.0


def _stop_ray(code: int) -> None:
    """Stop the Ray this process started, if any, before exit handlers would: a shutdown that
    hangs (or a second Ctrl-C during it) ends the process at once with `code`, and the watchdog
    removes what Ray left (sisa/training/watchdog.py)."""
    if "sisa.training.scheduler" not in sys.modules:  # no verb that runs shard jobs was loaded
        return
    from sisa.training import scheduler

    try:
        stopped = scheduler.shutdown_ray_within(RAY_STOP_S)
    except KeyboardInterrupt:
        stopped = False
    if not stopped:
        print(f"sisa: Ray did not stop within {RAY_STOP_S:g} s; exiting without it", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
