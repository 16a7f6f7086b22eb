"""A serving version as a folder that loads without the store: every shard adapter and how they
are served.

    <folder>/
        sisa_bundle.json                                      the manifest (below)
        shard0/adapter_model.safetensors, adapter_config.json  peft's own layout, one folder per shard
        shard1/...

The manifest names the version, how it is served (aggregation, prior, top_shards), the base model
(its config and fingerprint, so an adapter never loads onto another base) and, per shard, its
checkpoint id and the sha256 of each adapter file, checked before peft reads a byte. It holds
ids, settings, counts and digests, never record text; a checkpoint's optimizer state and lineage
stay in the store. `sisa export --format ensemble` writes one (`write_bundle`); the MLflow model
of every tracked version (sisa/serving/mlflow_model.py) carries the same parts as its artifacts and
loads them with `load_parts`. `load_bundle` + `generate_texts` serve it like `sisa generate` does.

The base model is referenced, not copied: `model.name` as configured (`tiny`, `smollm2`, or a
local folder, made absolute), with `cache_dir` made absolute too. On another machine, pass
`overrides={"base_model": "/path/to/folder"}`; the fingerprint check refuses a different base.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sisa.config import SisaConfig, build_config
from sisa.lineage import checkpoints
from sisa.lineage.versions import ModelVersion
from sisa.model import adapters
from sisa.model import mixture as aggregate
from sisa.model.base import base_model_fingerprint, load_base_model
from sisa.serving import engine as serving
from sisa.storage import layout
from sisa.storage.errors import ConfigError, IntegrityError, NotFoundError, ValidationError
from sisa.storage.store import Store

FORMAT = "sisa-ensemble"
SCHEMA_VERSION = 1
MANIFEST = "sisa_bundle.json"
ADAPTER_FILES = (adapters.ADAPTER_WEIGHTS, adapters.ADAPTER_CONFIG)
# What a loader may change: where the base lives and where it runs, never what the adapters need.
OVERRIDES = ("base_model", "cache_dir", "device")


def shard_name(shard_id: int) -> str:
    """The adapter name and folder of a shard, as `serving.load_ensemble` names it too."""
    return f"shard{shard_id}"


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _absolute_model_name(name: str) -> str:
    """`tiny` and `smollm2` name themselves; a local folder becomes an absolute path."""
    return name if name in ("tiny", "smollm2") else str(Path(name).expanduser().resolve())


# -- writing ---------------------------------------------------------------------------------------
def build_manifest(store: Store, cfg: SisaConfig, version: ModelVersion) -> dict[str, Any]:
    """The manifest of `version` as served with `cfg`, the adapters' sha256s from their
    checkpoints' own manifests (`write_bundle` checks the copied bytes against them)."""
    shards: dict[str, Any] = {}
    base_fps = set()
    for shard_id, ckpt_id in sorted(version.shards.items()):
        man = checkpoints.read_manifest(store, shard_id, ckpt_id)
        missing = [n for n in ADAPTER_FILES if n not in man["files"]]
        if missing:
            raise IntegrityError(f"checkpoint {ckpt_id} lists no {', '.join(missing)}; it cannot be served")
        shards[str(shard_id)] = {"checkpoint_id": ckpt_id, "files": {n: man["files"][n] for n in ADAPTER_FILES}}
        base_fps.add(man.get("base_model_fingerprint", ""))
    if not shards:  # a relief of every shard: the base model alone serves (exact)
        base_fps.add(base_model_fingerprint(cfg.model))
    if len(base_fps) != 1:
        raise IntegrityError(
            f"model version {version.model_version}'s checkpoints were trained on different base models"
        )
    counts = None
    if cfg.serving.prior == "records":
        live = serving.live_record_counts(store)
        counts = {str(k): int(live.get(k, 0)) for k in sorted(version.shards)}
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "model_version": version.model_version,
        "approximate": version.approximate,
        "created_at": version.created_at,
        "training_fingerprint": version.training_fingerprint,
        "serving": {
            "aggregation": version.aggregation,
            "prior": cfg.serving.prior,
            "record_counts": counts,
            "top_shards": cfg.serving.top_shards,
        },
        "model": {
            "name": _absolute_model_name(cfg.model.name),
            "cache_dir": str(Path(cfg.model.cache_dir).expanduser().resolve()),
            "dtype": cfg.model.dtype,
            "device": cfg.model.device,
        },
        "base_model_fingerprint": base_fps.pop(),
        "max_length": cfg.training.max_length,
        "shards": shards,
    }


def write_bundle(store: Store, cfg: SisaConfig, version: ModelVersion, out: str | os.PathLike) -> Path:
    """Write `version` as a bundle at `out` (a new or empty folder): the adapter files copied from
    verified checkpoints, then the manifest; everything lands at once by one rename."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValidationError(f"--out {str(out)!r} exists and is not empty; choose a new folder")
    manifest = build_manifest(store, cfg, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for key, shard in manifest["shards"].items():
            dst = tmp / shard_name(int(key))
            dst.mkdir()
            with checkpoints.open_checkpoint(store, shard["checkpoint_id"]) as ckpt:  # sha256 of every file
                for name in ADAPTER_FILES:
                    shutil.copyfile(os.path.join(ckpt.path, name), dst / name)
        verify_adapters(manifest, {int(k): tmp / shard_name(int(k)) for k in manifest["shards"]})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextmanager
def staged_bundle(store: Store, cfg: SisaConfig, version: ModelVersion) -> Iterator[Path]:
    """A bundle of `version` in the store's tmp/ (or the system temp dir for a remote store),
    removed when the block ends: what MLflow copies into a logged model."""
    root = store.fs.local_path(layout.TMP) if store.fs.is_local else None
    if root is not None:
        os.makedirs(root, exist_ok=True)
    else:
        import tempfile

        root = tempfile.gettempdir()
    folder = Path(root) / f"bundle-v{version.model_version}-{uuid.uuid4().hex[:8]}"
    try:
        yield write_bundle(store, cfg, version, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- reading ---------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest at `path` (the JSON file, or a bundle folder holding it), checked for shape."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise NotFoundError(
            f"{str(path)!r} is not a sisa bundle: no {MANIFEST}; write one with `sisa export --format ensemble`"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise IntegrityError(f"{str(path)!r} is not valid JSON: {e}") from None
    problems = []
    if manifest.get("format") != FORMAT:
        problems.append(f"`format` should be {FORMAT!r}, got {manifest.get('format')!r}")
    if not isinstance(manifest.get("schema_version"), int) or manifest["schema_version"] > SCHEMA_VERSION:
        problems.append(
            f"`schema_version` should be <= {SCHEMA_VERSION} (a newer sisa wrote it?), got "
            f"{manifest.get('schema_version')!r}"
        )
    for key in ("serving", "model", "shards"):
        if not isinstance(manifest.get(key), dict):
            problems.append(f"`{key}` should be a mapping")
    if problems:
        raise ConfigError([f"{str(path)!r}: {p}" for p in problems])
    return manifest


def verify_adapters(manifest: Mapping[str, Any], shard_dirs: Mapping[int, str | os.PathLike]) -> None:
    """Every shard the manifest names has its folder, and each adapter file its recorded sha256."""
    want = {int(k) for k in manifest["shards"]}
    if set(shard_dirs) != want:
        raise IntegrityError(
            f"the bundle's manifest names shards {sorted(want)}, the adapter folders are {sorted(shard_dirs)}"
        )
    for shard_id, folder in sorted(shard_dirs.items()):
        for name, sha in manifest["shards"][str(shard_id)]["files"].items():
            path = Path(folder) / name
            if not path.is_file():
                raise IntegrityError(f"shard {shard_id}'s adapter file {name} is missing from {str(folder)!r}")
            got = _sha256(path)
            if got != sha:
                raise IntegrityError(
                    f"shard {shard_id}'s adapter file {name} is damaged (sha256 {got[:12]}... != "
                    f"recorded {sha[:12]}...)"
                )


def _model_config(manifest: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> SisaConfig:
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError([f"unknown bundle override(s) {unknown}; known: {', '.join(OVERRIDES)}"])
    model = dict(manifest["model"])
    if overrides.get("base_model"):
        model["name"] = str(overrides["base_model"])
    for key in ("cache_dir", "device"):
        if overrides.get(key):
            model[key] = str(overrides[key])
    return build_config({"model": model})


def load_parts(
    manifest: Mapping[str, Any], shard_dirs: Mapping[int, str | os.PathLike], overrides: Mapping[str, Any] | None = None
) -> serving.Ensemble:
    """The ensemble of a bundle's parts: the base named in the manifest (or `overrides`), checked
    against the adapters' base fingerprint, with every shard adapter verified and loaded."""
    verify_adapters(manifest, shard_dirs)
    cfg = _model_config(manifest, overrides)
    fingerprint = base_model_fingerprint(cfg.model)
    if fingerprint != manifest.get("base_model_fingerprint"):
        raise IntegrityError(
            f"the adapters were trained on base model {str(manifest.get('base_model_fingerprint'))[:12]}..., "
            f"model {cfg.model.name!r} is {fingerprint[:12]}...; pass overrides={{'base_model': <the folder it was "
            f"trained on>}}"
        )
    base, tokenizer = load_base_model(cfg.model)
    s = manifest["serving"]
    if not shard_dirs:  # no adapter: the base model alone, as serving.load_ensemble serves it
        base.requires_grad_(False)
        base.eval()
        return serving.Ensemble(base, tokenizer, {serving.BASE_SHARD: aggregate.BASE}, s["aggregation"], None, 0)
    model = adapters.load_adapters(base, {shard_name(k): str(d) for k, d in sorted(shard_dirs.items())})
    counts = None if s.get("record_counts") is None else {int(k): int(v) for k, v in s["record_counts"].items()}
    return serving.Ensemble(
        model,
        tokenizer,
        {k: shard_name(k) for k in sorted(shard_dirs)},
        s["aggregation"],
        counts,
        int(s.get("top_shards", 0)),
    )


def load_bundle(
    folder: str | os.PathLike, overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], serving.Ensemble]:
    """(manifest, ensemble) of a bundle folder written by `write_bundle`; no store needed."""
    manifest = read_manifest(folder)
    dirs = {int(k): Path(folder) / shard_name(int(k)) for k in manifest["shards"]}
    return manifest, load_parts(manifest, dirs, overrides)


# -- as MLflow model artifacts -----------------------------------------------------------------------
MANIFEST_ARTIFACT = "manifest"
BASE_MODEL_ARTIFACT = "base_model"


def model_artifacts(folder: str | os.PathLike, base_model_dir: str | None = None) -> dict[str, str]:
    """A bundle's parts as MLflow artifacts: `manifest`, `shard<k>` per shard adapter folder and,
    when given, `base_model` (a copy of the base's folder, see `tracking.log_base_model`)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    out = {MANIFEST_ARTIFACT: str(folder / MANIFEST)}
    out.update({shard_name(int(k)): str(folder / shard_name(int(k))) for k in manifest["shards"]})
    if base_model_dir is not None:
        out[BASE_MODEL_ARTIFACT] = base_model_dir
    return out


def parts_from_artifacts(artifacts: Mapping[str, str]) -> tuple[dict[str, Any], dict[int, str]]:
    """(manifest, shard_id → adapter folder) from the local paths MLflow gives a loaded model."""
    if MANIFEST_ARTIFACT not in artifacts:
        raise NotFoundError(f"the MLflow model has no `{MANIFEST_ARTIFACT}` artifact; it was not logged by sisa")
    manifest = read_manifest(artifacts[MANIFEST_ARTIFACT])
    dirs = {}
    for key in manifest["shards"]:
        name = shard_name(int(key))
        if name not in artifacts:
            raise IntegrityError(f"the MLflow model has no `{name}` artifact, which its manifest names")
        dirs[int(key)] = artifacts[name]
    return manifest, dirs


def generate_texts(
    ens: serving.Ensemble,
    prompts: list[str],
    max_new_tokens: int = 32,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """A completion per prompt from the served mixture (greedy by default), as `sisa generate`."""
    if max_new_tokens < 1:
        raise ValidationError(f"max_new_tokens should be >= 1, got {max_new_tokens}")
    return [serving.generate_text(ens, p, max_new_tokens, greedy, temperature, seed) for p in prompts]
