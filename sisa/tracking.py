"""MLflow bookkeeping: one run and one registered model version per sisa model version.

This is the only module that imports MLflow. MLflow is a mirror of the store's version ledger
for people and tools (UI, registry aliases), never the source of truth, and never a place where
record text may land: the API takes only small params, metrics and tags, and rejects long
strings as a bug. By default everything lives inside the store: a sqlite database
(`<store>/mlflow.db`) and artifacts under `<store>/mlartifacts`, so a purge can prove that a
model version's run is physically gone. No code here starts a server; to browse, run
`mlflow ui --backend-store-uri sqlite:///<store>/mlflow.db` (it binds to 127.0.0.1 by default;
keep it that way).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

# MLflow reads MLFLOW_DISABLE_TELEMETRY at import time: the entry points (the CLI, Ray workers,
# tests) set it through sisa.offline before anything imports this module.
from mlflow.entities import Metric, Param, ViewType
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
from mlflow.utils.time import get_current_time_millis

from sisa.config import TrackingConfig
from storage.errors import ConfigError, NotFoundError, RefusedError

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
            ["`tracking.uri` should be set when the store is not a local path "
             "(e.g. sqlite:////abs/path/mlflow.db or http://127.0.0.1:5000)"]
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
    ) -> dict[str, str]:
        """One run `v{model_version}` plus a registered version pointing at it.

        Repeating the call for a version already registered returns the existing entry; a run
        left half-logged by a crash is purged and logged again. `artifact_files` must be small
        metadata (manifests), never data.
        """
        _check_small("param", params)
        _check_small("tag", {**tags, "reason": reason})
        existing = self._registered(model_version)
        if existing is not None:
            return {"run_id": existing.run_id, "registered_version": str(existing.version)}
        self._purge_runs(model_version)

        run_tags = {**tags, "model_version": str(model_version), "reason": reason}
        run = self.client.create_run(
            self._experiment_id(), run_name=f"v{model_version}", tags=run_tags
        )
        run_id = run.info.run_id
        now = get_current_time_millis()
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        for path in artifact_files or []:
            self.client.log_artifact(run_id, path)
        self.client.set_terminated(run_id)

        self._ensure_registered_model()
        # MLflow 3: register_model("runs:/...") wants a logged model; create the version directly.
        mv = self.client.create_model_version(
            self.cfg.registered_model,
            source=run.info.artifact_uri,
            run_id=run_id,
            tags={"model_version": str(model_version)},
        )
        return {"run_id": run_id, "registered_version": str(mv.version)}

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
            found = self.client.search_model_versions(
                f"name = '{self.cfg.registered_model}' and run_id = '{run_id}'"
            )
            versions.update(v.version for v in found)
        for version in sorted(versions, key=int):
            self.client.delete_model_version(self.cfg.registered_model, str(version))
        self._purge_runs(model_version)

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

    def _purge_runs(self, model_version: int) -> None:
        runs = self._runs(model_version)
        if not runs:
            return
        # The store's hard delete is what `mlflow gc` calls; the CLI itself would also reset
        # this process's global tracking URI and print to stdout.
        store = self.client._tracking_client.store
        for run in runs:
            if run.info.lifecycle_stage != LifecycleStage.DELETED:
                self.client.delete_run(run.info.run_id)
        if not hasattr(store, "_hard_delete_run"):
            # A tracking server (http) cannot hard-delete for us; fail closed and say how.
            ids = ",".join(r.info.run_id for r in runs)
            raise RefusedError(
                f"MLflow at {self.uri} only soft-deleted the runs of model_version "
                f"{model_version}; run `mlflow gc --backend-store-uri <its database> "
                f"--run-ids {ids}` on the tracking server, then retry"
            )
        for run in runs:
            get_artifact_repository(run.info.artifact_uri).delete_artifacts()
            self._remove_empty_run_dir(run.info.run_id)
            store._hard_delete_run(run.info.run_id)
        self._vacuum()

    def _remove_empty_run_dir(self, run_id: str) -> None:
        """The artifact repo deletes `<root>/<run_id>/artifacts`; drop the empty parent too."""
        if self.artifact_root is None:
            return
        run_dir = self.artifact_root / run_id
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            shutil.rmtree(run_dir)

    def _vacuum(self) -> None:
        """Rewrite the sqlite file so deleted rows do not survive in free pages.

        Redundant where sqlite was built with SECURE_DELETE (it zeroes freed content), but
        not every build is; it costs milliseconds on a database of this size.
        """
        if not self.uri.startswith(_SQLITE):
            return
        path = self.uri[len(_SQLITE):].split("?", 1)[0]
        with sqlite3.connect(path, timeout=30) as con:
            con.execute("VACUUM")
        con.close()

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            location = self.artifact_root.as_uri() if self.artifact_root is not None else None
            try:
                return self.client.create_experiment(
                    self.cfg.experiment, artifact_location=location
                )
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


def _is_missing(error: MlflowException) -> bool:
    return error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def _check_small(kind: str, values: dict[str, Scalar]) -> None:
    """Refuse anything that could be record text; reaching this is a bug in the caller.

    The message names the key and length only, never the value.
    """
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float):
            raise AssertionError(
                f"{kind} `{key}` should be a str, int or float, got {type(value).__name__}"
            )
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise AssertionError(
                f"{kind} `{key}` is {len(value)} characters (limit {MAX_VALUE_CHARS}); "
                "tracking takes ids, counts and digests, never record text"
            )
