"""MLflow bookkeeping: one run, one logged model and one registered model version per sisa model
version, through one MLflow client (`Tracker`).

MLflow is imported here and in sisa/serving/mlflow_model.py (the pyfunc model each version is
logged as), nowhere else. MLflow is a mirror of the store's version ledger for people and tools
(UI, registry aliases, serving), never the source of truth, and never a place where record text
may land: the API takes only small params, metrics and tags, and rejects long strings as a bug.
By default everything lives inside the store: a sqlite database (`<store>/mlflow.db`) and
artifacts under `<store>/mlartifacts` (a logged model's under `mlartifacts/models/<model_id>/`),
so a purge can prove that a model version's run and model are physically gone. No code here
starts a server; to browse, run `mlflow ui --backend-store-uri sqlite:///<store>/mlflow.db` (it
binds to 127.0.0.1 by default; keep it that way).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path

# MLflow reads MLFLOW_DISABLE_TELEMETRY at import time: the entry points (the CLI, Ray workers,
# tests) set it through sisa.offline before anything imports this module.
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, ViewType
from mlflow.entities.lifecycle_stage import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.store.artifact.artifact_repository_registry import (
    get_artifact_repository,
)
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS
from mlflow.utils.time import get_current_time_millis

from sisa.config import TrackingConfig
from sisa.serving.mlflow_model import MODEL_NAME, MODEL_TYPE, save_model
from sisa.storage import layout
from sisa.storage.errors import ConfigError, NotFoundError, RefusedError

MAX_VALUE_CHARS = 500
_SQLITE = "sqlite:///"
Scalar = str | int | float


def tracking_uri(cfg: TrackingConfig, store_local_path: str | None) -> str:
    """`tracking.uri`, else MLFLOW_TRACKING_URI, else a sqlite file inside the store."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    if store_local_path is None:
        raise ConfigError(
            [
                "`tracking.uri` should be set when the store is not a local path "
                "(e.g. sqlite:////abs/path/mlflow.db or http://127.0.0.1:5000)"
            ]
        )
    return _SQLITE + str(Path(store_local_path).resolve() / "mlflow.db")


class Tracker:
    """Logs, registers, aliases and purges sisa model versions in one MLflow backend.

    Registered versions are found by their `model_version` tag, runs by the same run tag, so
    every call is keyed by the sisa model_version and safe to repeat after a crash.
    """

    def __init__(self, cfg: TrackingConfig, store_local_path: str | None = None):
        self.cfg = cfg
        self.uri = tracking_uri(cfg, store_local_path)
        # A sqlite backend has no server to own artifacts; keep them in the store beside it.
        self.artifact_root: Path | None = None
        if self.uri.startswith(_SQLITE) and store_local_path is not None:
            self.artifact_root = Path(store_local_path).resolve() / "mlartifacts"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def log_model_version(
        self,
        model_version: int,
        reason: str,
        params: dict[str, Scalar],
        metrics: dict[str, float],
        tags: dict[str, str],
        artifact_files: list[str] | None = None,
        model_artifacts: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """One run `v{model_version}`, with `model_artifacts` a logged `EnsembleModel` of that run
        (sisa/serving/mlflow_model.py), plus a registered version of it (of the run alone without a
        model).

        Repeating the call for a version already registered returns the existing entry; a run
        left half-logged by a crash is purged and logged again. `artifact_files` must be small
        metadata (manifests), never data; `model_artifacts` (name → local path) are the shard
        adapters and the bundle manifest (sisa/serving/bundle.py), optionally the base model.
        """
        _check_small("param", params)
        _check_small("tag", {**tags, "reason": reason})
        existing = self._registered(model_version)
        if existing is not None:
            return {"run_id": existing.run_id, "registered_version": str(existing.version)}
        self._refuse_soft_deleted(self._purge_runs(model_version))

        run_tags = {**tags, "model_version": str(model_version), "reason": reason}
        run = self.client.create_run(self._experiment_id(), run_name=f"v{model_version}", tags=run_tags)
        run_id = run.info.run_id
        now = get_current_time_millis()
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        for path in artifact_files or []:
            self.client.log_artifact(run_id, path)
        model = None
        if model_artifacts is not None:
            model = self._log_model(run.info.experiment_id, run_id, model_version, model_artifacts, params)
        self.client.set_terminated(run_id)

        self._ensure_registered_model()
        # MLflow 3: the version points at the logged model. Its source is the model's artifact
        # location, not `models:/<model_id>`: the registry would resolve that through the
        # process-global tracking URI, not this client's.
        mv = self.client.create_model_version(
            self.cfg.registered_model,
            source=model.artifact_location if model is not None else run.info.artifact_uri,
            run_id=run_id,
            tags={"model_version": str(model_version)},
            model_id=model.model_id if model is not None else None,
        )
        out = {"run_id": run_id, "registered_version": str(mv.version)}
        if model is not None:
            # The link MLflow's UI follows from a logged model to its registered versions (the
            # sqlite registry keeps no model_id of its own), as `mlflow.register_model` writes it.
            link = [{"name": self.cfg.registered_model, "version": str(mv.version)}]
            self.client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(link)})
            out["model_id"] = model.model_id
        return out

    def _log_model(
        self,
        experiment_id: str,
        run_id: str,
        model_version: int,
        artifacts: Mapping[str, str],
        params: dict[str, Scalar],
    ):
        """A logged model of `run_id` holding an `EnsembleModel` with `artifacts`, READY.

        Done with this tracker's client rather than `mlflow.pyfunc.log_model`, which logs through
        the process-global tracking URI and active run.
        """
        model = self.client.create_logged_model(
            experiment_id,
            name=MODEL_NAME,
            source_run_id=run_id,
            params={k: str(v) for k, v in params.items()},
            tags={"model_version": str(model_version)},
            model_type=MODEL_TYPE,
        )
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="sisa-mlflow-model-", dir=self._tmp_root()) as tmp:
            local = save_model(Path(tmp), artifacts, model.artifact_location, model.model_id, run_id, model_version)
            self.client.log_model_artifacts(model.model_id, str(local))
        return self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)

    def _tmp_root(self) -> str | None:
        """Scratch space beside the store's MLflow artifacts (the store's tmp/), else the system's."""
        if self.artifact_root is None:
            return None
        root = self.artifact_root.parent / layout.TMP
        root.mkdir(parents=True, exist_ok=True)
        return str(root)

    def log_artifacts(self, model_version: int, paths: list[str], artifact_path: str | None = None) -> None:
        """Attach files (reports, plots: never record text) to the run of `model_version`."""
        runs = [r for r in self._runs(model_version) if r.info.lifecycle_stage != LifecycleStage.DELETED]
        if not runs:
            raise NotFoundError(f"model_version {model_version} has no MLflow run to attach artifacts to")
        for path in paths:
            self.client.log_artifact(runs[0].info.run_id, path, artifact_path)

    def set_serving_alias(self, model_version: int) -> None:
        """Point alias `tracking.alias` at the registered version of `model_version`."""
        version = self.find_registered_version(model_version)
        if version is None:
            raise NotFoundError(
                f"model_version {model_version} has no registered MLflow version in "
                f"{self.cfg.registered_model!r}; log it before moving the alias"
            )
        self.client.set_registered_model_alias(self.cfg.registered_model, self.cfg.alias, version)

    def find_registered_version(self, model_version: int) -> str | None:
        """The registered version number (MLflow's own string) for `model_version`, if any."""
        mv = self._registered(model_version)
        return None if mv is None else str(mv.version)

    def serving_version(self) -> int | None:
        """The sisa model_version the serving alias points at, or None if there is no alias."""
        # MLflow answers a missing alias of an existing model with INVALID_PARAMETER_VALUE, not
        # RESOURCE_DOES_NOT_EXIST: read the model's alias map instead of catching that.
        try:
            model = self.client.get_registered_model(self.cfg.registered_model)
        except MlflowException as e:
            if _is_missing(e):
                return None
            raise
        version = model.aliases.get(self.cfg.alias)
        if version is None:
            return None
        mv = self.client.get_model_version(self.cfg.registered_model, str(version))
        tag = mv.tags.get("model_version")
        return None if tag is None else int(tag)

    def purge_model_version(self, model_version: int) -> None:
        self.purge_model_versions([model_version])

    def purge_model_versions(self, model_versions: list[int]) -> None:
        """Purge each version (below); on a tracking server, one refusal at the end naming the
        one `mlflow gc` command that finishes all of them."""
        pending: list[tuple[list[str], list[str]]] = []
        for n in model_versions:
            pending.extend(self._purge_model_version(n))
        self._refuse_soft_deleted(pending)

    def _purge_model_version(self, model_version: int) -> list[tuple[list[str], list[str]]]:
        """Delete the registered version and physically remove its run and artifacts.

        Deleting in MLflow is soft: a registered version becomes a tombstone (MLflow keeps the
        row with its tags and `storage_location`, the run's artifact URI, but redacts source and
        run id) and a run only moves to the `deleted` stage.
        The run is then hard-deleted as `mlflow gc --run-ids` does, and the sqlite file is
        vacuumed so the freed pages holding its params and tags are gone too. If the alias
        pointed at this version MLflow drops it. Already purged: nothing to do, no error.
        """
        mv = self._registered(model_version)
        run_ids = {r.info.run_id for r in self._runs(model_version)}
        versions = {mv.version} if mv is not None else set()
        # A version whose tag write was lost still points at the run: find it by run id too.
        for run_id in run_ids:
            found = self.client.search_model_versions(f"name = '{self.cfg.registered_model}' and run_id = '{run_id}'")
            versions.update(v.version for v in found)
        for version in sorted(versions, key=int):
            self.client.delete_model_version(self.cfg.registered_model, str(version))
        return self._purge_runs(model_version)

    def _registered(self, model_version: int):
        try:
            found = self.client.search_model_versions(
                f"name = '{self.cfg.registered_model}' and tags.model_version = '{model_version}'"
            )
        except MlflowException as e:
            if _is_missing(e):
                return None
            raise
        return max(found, key=lambda v: int(v.version)) if found else None

    def _runs(self, model_version: int) -> list:
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            return []
        return self.client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.model_version = '{model_version}'",
            run_view_type=ViewType.ALL,
        )

    def _purge_runs(self, model_version: int) -> list[tuple[list[str], list[str]]]:
        """Hard-delete the version's runs and models; on a tracking server, what is left
        soft-deleted for `mlflow gc`: [(run ids, logged model ids)]."""
        runs = self._runs(model_version)
        if not runs:
            return []
        # The store's hard delete is what `mlflow gc` calls; the CLI itself would also reset
        # this process's global tracking URI and print to stdout.
        store = self.client._tracking_client.store
        for run in runs:
            if run.info.lifecycle_stage != LifecycleStage.DELETED:
                self.client.delete_run(run.info.run_id)
        if not hasattr(store, "_hard_delete_run"):
            return [self._purge_through_server(runs)]
        for run in runs:
            for model in self._logged_models(run):
                # The model's artifacts (adapters, manifest) first, then its row: a purge cut
                # short here finds the row again and finishes.
                get_artifact_repository(model.artifact_location).delete_artifacts()
                self._remove_empty_dir(Path(_local_path(model.artifact_location)).parent)
                store._hard_delete_logged_model(model.model_id)
            get_artifact_repository(run.info.artifact_uri).delete_artifacts()
            self._remove_empty_run_dir(run.info.run_id)
            store._hard_delete_run(run.info.run_id)
        self._vacuum()
        return []

    def _purge_through_server(self, runs: list) -> tuple[list[str], list[str]]:
        """A tracking server (http) lets a client delete artifacts (served through its proxy)
        and soft-delete runs and logged models, not hard-delete rows: do all of that and return
        what `mlflow gc` must remove on the server (run ids, logged model ids)."""
        model_ids = []
        for run in runs:
            for model in self._logged_models(run):
                _delete_artifacts(model.artifact_location, self.uri)
                self.client.delete_logged_model(model.model_id)
                model_ids.append(model.model_id)
            _delete_artifacts(run.info.artifact_uri, self.uri)
        return [r.info.run_id for r in runs], model_ids

    def _refuse_soft_deleted(self, pending: list[tuple[list[str], list[str]]]) -> None:
        """Fail closed while a tracking server still holds soft-deleted rows, naming the
        `mlflow gc` command that removes them."""
        run_ids = [r for runs, _ in pending for r in runs]
        if not run_ids:
            return
        model_ids = [m for _, models in pending for m in models]
        cmd = f"mlflow gc --backend-store-uri <the server's backend store> --run-ids {','.join(run_ids)}"
        if model_ids:
            cmd += f" --logged-model-ids {','.join(model_ids)}"
        raise RefusedError(
            f"MLflow at {self.uri} deleted the artifacts of {len(run_ids)} purged run(s) and "
            "soft-deleted the runs and their models; a tracking server keeps their rows until "
            f"`mlflow gc`. Run on the tracking server:\n  {cmd}\nthen rerun this command "
            "(`sisa forget --resume`, `sisa process`)"
        )

    def _logged_models(self, run) -> list:
        """Every logged model of a run, found by its source run (also one logged before a crash
        cut its run short of recording the model as an output)."""
        found, token = [], None
        while True:
            page = self.client.search_logged_models(
                [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'", page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _remove_empty_run_dir(self, run_id: str) -> None:
        """The artifact repo deletes `<root>/<run_id>/artifacts`; drop the empty parent too."""
        if self.artifact_root is None:
            return
        self._remove_empty_dir(self.artifact_root / run_id)

    def _remove_empty_dir(self, folder: Path) -> None:
        """Remove an emptied artifact folder, only ever inside the store's own artifact root."""
        if self.artifact_root is None or self.artifact_root not in folder.resolve().parents:
            return
        if folder.is_dir() and not any(folder.iterdir()):
            shutil.rmtree(folder)

    def _vacuum(self) -> None:
        """Rewrite the sqlite file so deleted rows do not survive in free pages.

        Redundant where sqlite was built with SECURE_DELETE (it zeroes freed content), but
        not every build is; it costs milliseconds on a database of this size.
        """
        if not self.uri.startswith(_SQLITE):
            return
        path = self.uri[len(_SQLITE) :].split("?", 1)[0]
        with sqlite3.connect(path, timeout=30) as con:
            con.execute("VACUUM")
        con.close()

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            location = self.artifact_root.as_uri() if self.artifact_root is not None else None
            try:
                return self.client.create_experiment(self.cfg.experiment, artifact_location=location)
            except MlflowException as e:
                if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                exp = self.client.get_experiment_by_name(self.cfg.experiment)
                assert exp is not None
        if exp.lifecycle_stage == LifecycleStage.DELETED:
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _ensure_registered_model(self) -> None:
        try:
            self.client.create_registered_model(self.cfg.registered_model)
        except MlflowException as e:
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise


def _local_path(uri: str) -> str:
    """The local path of a file:// artifact URI (other schemes: returned as they are)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def _delete_artifacts(uri: str, tracking_uri: str) -> None:
    """Delete everything under an artifact URI (through this tracker's server, never the
    process-global tracking URI); already gone is fine (a retried purge)."""
    try:
        get_artifact_repository(uri, tracking_uri=tracking_uri).delete_artifacts()
    except MlflowException as e:
        if not _is_missing(e):
            raise
    except FileNotFoundError:
        pass


def _is_missing(error: MlflowException) -> bool:
    return error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def _check_small(kind: str, values: dict[str, Scalar]) -> None:
    """Refuse anything that could be record text; reaching this is a bug in the caller.

    The message names the key and length only, never the value.
    """
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float):
            raise AssertionError(f"{kind} `{key}` should be a str, int or float, got {type(value).__name__}")
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise AssertionError(
                f"{kind} `{key}` is {len(value)} characters (limit {MAX_VALUE_CHARS}); "
                "tracking takes ids, counts and digests, never record text"
            )
