"""A sisa model version as an MLflow model: the pyfunc `EnsembleModel` and how it is saved.

Each registered version is a loadable MLflow model, logged as "models from code" (MLflow runs
`MODEL_CODE` on load, so loading unpickles nothing): its artifacts are the version's shard
adapters and the bundle manifest of sisa/serving/bundle.py (serving settings, base model config,
sha256s), and

    mlflow.pyfunc.load_model("models:/<registered_model>@serving").predict(["Ada works as a"],
                                                                           params={"max_new_tokens": 8})

returns one completion per prompt, decoded greedily from the version's mixture. The base model is
named, not copied (unless `tracking.log_base_model`); the sisa package must be importable where the
model loads. The tracking client that logs and registers it is sisa/serving/tracking.py.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# MLflow reads MLFLOW_DISABLE_TELEMETRY at import time: the entry points (the CLI, Ray workers,
# tests) set it through sisa.offline before anything imports this module.
import mlflow.pyfunc
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from sisa.serving import bundle
from sisa.storage.errors import ValidationError

MODEL_NAME = "model"  # the logged model's name within its version's run
MODEL_TYPE = "sisa-ensemble"
# Generation parameters `predict(..., params=...)` takes, with their MLflow types and defaults.
PREDICT_PARAMS: dict[str, tuple[str, Any]] = {
    "max_new_tokens": ("long", 32),
    "greedy": ("boolean", True),
    "temperature": ("double", 1.0),
    "seed": ("long", 0),
}
# What a logged model's environment needs besides sisa itself (not on PyPI: it must be importable).
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "peft", "safetensors", "pyarrow", "pyyaml", "pandas")
# The models-from-code file of every logged model: MLflow runs it on load instead of unpickling.
MODEL_CODE = '''"""A sisa model version as an MLflow pyfunc; the class is in sisa/serving/mlflow_model.py."""
import mlflow

from sisa.serving.mlflow_model import EnsembleModel

mlflow.models.set_model(EnsembleModel())
'''
MODEL_CODE_FILE = "sisa_model.py"


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """A model version's shard adapters on the base, served as sisa serves them.

    `predict` takes a list of prompts (or a DataFrame with a `prompt` column) and returns one
    completion per prompt. `params`: max_new_tokens (32), greedy (true),
    temperature (1.0) and seed (0) for sampling. `load_model(..., model_config={"base_model":
    "/path"})` points at the base model's folder where the recorded one is not (also `cache_dir`,
    `device`); a base with another fingerprint is refused.
    """

    def load_context(self, context) -> None:
        overrides = dict(context.model_config or {})
        if "base_model" in context.artifacts and not overrides.get("base_model"):
            overrides["base_model"] = context.artifacts["base_model"]
        manifest, shard_dirs = bundle.parts_from_artifacts(context.artifacts)
        self.manifest = manifest
        self.ensemble = bundle.load_parts(manifest, shard_dirs, overrides)

    # MLflow would infer a signature from predict's type hints, replacing the declared one and its
    # params, and warns when there are none; the flag (what MLflow's own ChatModel sets) skips both.
    _skip_type_hint_validation = True

    def predict(self, context, model_input, params=None):  # -> list[str]
        p = {k: default for k, (_, default) in PREDICT_PARAMS.items()} | dict(params or {})
        decoding = int(p["max_new_tokens"]), bool(p["greedy"]), float(p["temperature"]), int(p["seed"])
        return bundle.generate_texts(self.ensemble, _prompts(model_input), *decoding)


def _prompts(model_input) -> list[str]:
    """The prompts of a list (or array) of strings, one string, or a DataFrame's `prompt` column."""
    if isinstance(model_input, str):
        return [model_input]
    columns = getattr(model_input, "columns", None)
    if columns is not None:  # a pandas DataFrame
        if "prompt" not in columns:
            raise ValidationError(f"a DataFrame of prompts should have a `prompt` column, got columns {list(columns)}")
        model_input = model_input["prompt"].tolist()
    prompts = list(model_input)
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValidationError(f"prompts should be strings; rows {bad[:5]} are not")
    return prompts


def model_signature() -> ModelSignature:
    """Strings out, with the generation params declared so MLflow passes them on. No input schema:
    MLflow would turn a list into a DataFrame and rename a DataFrame's columns, so `_prompts`
    reads the input as given (a list, a string, or a DataFrame's `prompt` column)."""
    return ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(k, kind, default) for k, (kind, default) in PREDICT_PARAMS.items()]),
    )


def _requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def save_model(
    folder: Path, artifacts: Mapping[str, str], artifact_location: str, model_id: str, run_id: str, model_version: int
) -> Path:
    """An `EnsembleModel` with `artifacts` saved as the MLflow model `model_id` of `run_id` in
    `folder/MODEL_NAME` (beside its models-from-code file), for the tracking client to upload."""
    meta = Model(artifact_path=artifact_location, model_uuid=model_id, run_id=run_id, model_id=model_id)
    code = folder / MODEL_CODE_FILE
    code.write_text(MODEL_CODE)
    local = folder / MODEL_NAME
    with warnings.catch_warnings():
        # "add type hints", "no input example": the signature is declared instead.
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            str(local),
            python_model=str(code),
            artifacts=dict(artifacts),
            signature=model_signature(),
            pip_requirements=_requirements(),
            mlflow_model=meta,
            metadata={"sisa_model_version": model_version},
        )
    return local
