"""sisa's Python API: one store, the verbs as methods.

    import sisa

    store = sisa.open("sisa-store", config="tiny", **{"sharding.num_shards": 2})
    store.ingest("people.jsonl", subject_field="subject_id")
    trained = store.train()
    result = store.forget(subject="person-00003")
    store.verify(result.request.request_id, replay=True)
    store.certificate(result.request.request_id)
    model = store.model()
    model.generate("Ada Lane works as a")

Each method is the code path of its `sisa` verb (pipelines/ parses the flags, calls the method
and prints what it returns), with the result objects those verbs print. Errors are sisa's
(storage/errors.py): `ValidationError` for bad input (naming the bad rows or ids, nothing
changed), `RefusedError` for what the store's guarantees forbid (a rollback that would bring
forgotten data back), `ConfigError` for a bad config, `NotFoundError` for unknown ids.
Nothing here runs at `import sisa`: torch, peft, Ray and MLflow load with the first method that
needs them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from sisa import forgetting, serving
from sisa.config import SisaConfig, build_config, load_config
from sisa.data import IngestResult, Source, from_dataset, from_table, ingest_sources, open_store, read_source
from sisa.lineage import DeletionRequest, ModelVersion, requests_ledger, versions
from sisa.storage.errors import ValidationError
from sisa.storage.store import Store

if TYPE_CHECKING:  # torch, peft, Ray: they load with the first method that needs them (sisa.lazy)
    from sisa.evidence import Probe
    from sisa.forgetting import RequestResult, Texts
    from sisa.forgetting.rollback import RollbackResult
    from sisa.serving import Ensemble
    from sisa.training import TrainResult

__all__ = ["SELECTORS", "ServedModel", "SisaStore", "open"]

# The `forget` keywords, each a selector kind of the deletion ledger.
SELECTORS = ("ids", "subject", "source", "ingest_id")


def open(  # shadows the builtin here on purpose: `sisa.open(...)` opens a store
    uri: str | Path | None = None,
    config: str | Path | SisaConfig | None = None,
    **overrides: Any,
) -> SisaStore:
    """The store at `uri` (a local path or a pyarrow.fs URI such as `s3://bucket/prefix`) with a
    config: a YAML file, a shipped config's name (`tiny`, `demo`, `base`), a `SisaConfig`, or
    none (the defaults); `overrides` are dotted keys, `**{"sharding.num_shards": 8}`, as the
    CLI's `key.sub=value`. `uri` wins over the config's `store.uri`.

    A store that does not exist yet is created by the first `ingest`. An existing store is
    checked against the config now (shards and seed are fixed for its life): `ConfigError`.
    """
    texts = [f"{key}={_override_text(value)}" for key, value in overrides.items()]
    if uri is not None:
        texts.append(f"store.uri={uri}")
    cfg = build_config(config.to_dict(), texts) if isinstance(config, SisaConfig) else load_config(config, texts)
    store = SisaStore(cfg)
    if Store.exists(cfg.store.uri):
        open_store(cfg)  # raises ConfigError when the config does not fit the store
    return store


def _override_text(value: Any) -> str:
    """A Python value as the CLI would spell it (YAML reads JSON's scalars and lists)."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class ServedModel:
    """A model version loaded for generation and scoring: the mixture of its shard adapters on
    the base model, aggregated as `serving` says (`posterior` by default)."""

    model_version: int
    ensemble: Ensemble
    prior: str
    max_length: int = 64

    @property
    def shards(self) -> list[int]:
        """The shard ids whose adapters this version serves."""
        return sorted(self.ensemble.names)

    def generate(
        self, prompt: str, max_new_tokens: int = 32, sample: bool = False, temperature: float = 1.0, seed: int = 0
    ) -> str:
        """The continuation of `prompt` (without the prompt): greedy, or sampled with `seed`."""
        return serving.generate_text(self.ensemble, prompt, max_new_tokens, not sample, temperature, seed)

    def chat(
        self,
        message: str | list[tuple[str, str]],
        system: str | None = None,
        max_new_tokens: int = 32,
        sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> str:
        """The assistant's reply to a user `message` (or to a list of (role, content) turns),
        rendered with the base model's chat template, the one chat records are trained through."""
        turns = [("user", message)] if isinstance(message, str) else list(message)
        if system:
            turns = [("system", system), *turns]
        return serving.generate_chat(self.ensemble, turns, max_new_tokens, not sample, temperature, seed)

    def score(self, texts: list[str], prompts: list[str | None] | None = None) -> list[float]:
        """The served model's mean loss per token of each text (lower: more familiar); with
        `prompts`, of the tokens after each prompt only."""
        if isinstance(texts, str):
            raise ValidationError("score() takes a list of texts, got one string")
        served, _ = serving.score_records(self.ensemble, list(texts), prompts, self.max_length)
        return served


class SisaStore:
    """A SISA store and its config: data, shard adapters, model versions and deletion requests.

    Make one with `sisa.open(...)`. It holds no open files or models between calls; every method
    opens the store, takes the lock its verb takes and lets it go, so a store may be used from
    several processes (the CLI, the service) at once.
    """

    def __init__(self, config: SisaConfig):
        self.config = config

    def __repr__(self) -> str:
        return f"SisaStore({self.uri!r})"

    @property
    def uri(self) -> str:
        """Where the store lives (`store.uri`)."""
        return self.config.store.uri

    def _open(self) -> Store:
        return open_store(self.config)

    # -- data ---------------------------------------------------------------------------------
    def ingest(
        self,
        *inputs: str | Path | pa.Table | Source | Any,
        id_field: str | None = None,
        text_field: str | None = None,
        subject_field: str | None = None,
        source: str | None = None,
        format: str | None = None,
        name: str = "table",
    ) -> list[IngestResult]:
        """Validate and ingest records, one ingest per input (`sisa ingest`).

        An input is a JSONL, CSV or Parquet file, an HF `save_to_disk` folder, a `pyarrow.Table`
        or a `datasets.Dataset` (provenance `source` = `name`). Records are plain `text`, `prompt`
        + `completion`, or chat `messages` (`format`: auto, text, prompt-completion, chat). The
        field names and `source` override the config's `ingest.*`. Every input is validated
        before anything is written: any problem raises one `ValidationError` naming the rows or
        ids, and nothing changes. Records already in the store with identical text are skipped.
        """
        if not inputs:
            raise ValidationError("ingest() needs at least one input (a file, folder, table or dataset)")
        cfg = self._with(
            {
                "ingest.id_field": id_field,
                "ingest.text_field": text_field,
                "ingest.subject_field": subject_field,
                "ingest.source": source,
                "ingest.format": format,
            }
        )
        return ingest_sources(cfg, [_source(i, name) for i in inputs])

    def _with(self, overrides: dict[str, Any]) -> SisaConfig:
        """This store's config with the given keys set (None: unchanged)."""
        texts = [f"{k}={_override_text(v)}" for k, v in overrides.items() if v is not None]
        return build_config(self.config.to_dict(), texts) if texts else self.config

    # -- training -----------------------------------------------------------------------------
    def train(self, from_scratch: bool = False) -> TrainResult:
        """Train every shard's pending slices and commit a model version that serves (`sisa train`).

        Shards with nothing new keep their checkpoints byte for byte; queued deletion requests
        are carried out first. `from_scratch` retrains every shard from slice 0 (after a training
        config change). A failed shard job commits nothing and raises `TrainingError`.
        """
        store = self._open()
        with store.job("train", self.config.store.lock_timeout_s):
            return forgetting.train_store(store, self.config, from_scratch, "train")

    # -- forgetting ---------------------------------------------------------------------------
    def forget(
        self,
        ids: str | Iterable[str] | None = None,
        *,
        subject: str | Iterable[str] | None = None,
        source: str | Iterable[str] | None = None,
        ingest_id: str | Iterable[str] | None = None,
        fast: bool = False,
        isolate: bool = False,
        relief: bool | None = None,
        queue: bool = False,
        dry_run: bool = False,
        allow_missing: bool = False,
        evidence: bool = True,
        holdout: str | Texts | None = None,
        probes: str | list[Probe] | None = None,
        requested_by: str | None = None,
        identity_verification: str | None = None,
        idempotency_key: str | None = None,
        on_version: Callable[[str, ModelVersion], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> RequestResult:
        """Forget records exactly (`sisa forget`): by record `ids`, or every record of a
        `subject`, a `source` or an `ingest_id` (give exactly one).

        The request is written to the ledger (keyed hashes only) before anything is destroyed;
        then the records are deleted, each affected shard is retrained from its last clean
        checkpoint, a version commits, every checkpoint that saw them is purged and the request
        is certified. Until the exact version serves: the exact relief (`relief`, default
        `deletion.relief`), an approximate unlearned version (`fast`), or the unaffected shards
        alone (`isolate`). `queue` records the request and serves the relief; `process()` or
        `train()` carries it out. `dry_run` returns the plan and changes nothing. Unknown ids
        raise `ValidationError` (or are skipped with `allow_missing`); ids already forgotten are
        a no-op. `evidence` measures the records' memorization before and after (`holdout`: records
        no model saw, `probes`: paraphrase/related/locality probes, each a file or read).
        `requested_by` (default: the login name) and `identity_verification` (how the subject's
        identity was checked, never whose) are recorded; filing again with the same
        `idempotency_key` returns the first request.
        `on_version(kind, version)` is called after each commit; `log` receives progress lines.
        When the policy's rule asks for approvers the request waits (`awaiting_approval`).
        """
        kind, values = _selector({"ids": ids, "subject": subject, "source": source, "ingest_id": ingest_id})
        cfg = self.config
        mode = forgetting.filing.request_mode(cfg, fast, isolate, relief)
        held, probe_list = forgetting.filing.read_evidence_inputs(cfg, evidence, holdout, probes)
        store = self._open()
        # Queued (or a dry run): metadata and a relief commit only, beside a running batch;
        # carried out now: a retrain, one job at a time.
        lock = store.lock if queue or dry_run else store.job
        options = forgetting.RequestOptions(
            mode=mode,
            queue=queue,
            dry_run=dry_run,
            allow_missing=allow_missing,
            evidence=evidence,
            holdout=held,
            probes=probe_list,
            idempotency_key=idempotency_key,
            filer=forgetting.filing.filer(requested_by, identity_verification),
        )
        with lock("forget", cfg.store.lock_timeout_s):
            return forgetting.runner.forget(store, cfg, kind, values, options, log=log, on_version=on_version)

    def resume(self, log: Callable[[str], None] | None = None) -> list[DeletionRequest]:
        """Finish every request a crash interrupted, from where it stopped (`sisa forget --resume`)."""
        store = self._open()
        with store.job("forget --resume", self.config.store.lock_timeout_s):
            return forgetting.runner.resume(store, self.config, log=log)

    def rollback(self, model_version: int) -> RollbackResult:
        """Serve an earlier model version (`sisa rollback`). Raises `RefusedError` when the
        version was purged or any of its checkpoints' lineage holds a forgotten record, naming
        the request responsible: a rollback never brings forgotten data back."""
        if isinstance(model_version, bool) or not isinstance(model_version, int):
            raise ValidationError(f"model_version should be a model version number, got {model_version!r}")
        store = self._open()
        with store.job("rollback", self.config.store.lock_timeout_s):
            return forgetting.roll_back(store, self.config, model_version)

    # -- serving ------------------------------------------------------------------------------
    def model(self, model_version: int | None = None) -> ServedModel:
        """The serving model version (or `model_version`) loaded for `generate`, `chat` and
        `score` (`sisa generate`), aggregated as the config's `serving` says."""
        version, ens = serving.load_serving(self._open(), self.config, model_version)
        return ServedModel(version.model_version, ens, self.config.serving.prior, self.config.training.max_length)

    # -- evidence -----------------------------------------------------------------------------
    def verify(
        self,
        request_id: str | None = None,
        replay: bool = False,
        before_replay: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Re-check what serves (`sisa verify`): checkpoint integrity, that no serving lineage
        holds a forgotten record, that every purge happened, for one request or every completed
        one; `replay` retrains the affected shards from scratch and compares tensors with
        `torch.equal` (the exactness proof), under the store's own training config; it is first
        told `before_replay(expectation)` whether identical tensors are expected on this runtime
        (the report's `replay_runtime`). The report's `passed` is True when all held."""
        store = self._open()
        with store.job("verify", self.config.store.lock_timeout_s):
            return forgetting.verification.verify_store(store, self.config, request_id, replay, before_replay)

    def request(self, request_id: str) -> DeletionRequest:
        """One request of the deletion ledger (`NotFoundError` when unknown)."""
        return requests_ledger.read_request(self._open(), request_id)

    def requests(self) -> list[DeletionRequest]:
        """Every deletion and rectification request, oldest first (`sisa requests`)."""
        return requests_ledger.all_requests(self._open())

    def certificate(self, request_id: str) -> dict[str, Any]:
        """The signed certificate of a completed request (`sisa certificate ID --out FILE`):
        what was forgotten (as keyed hashes), the checkpoints before and after, the lineage and
        purge checks, the evidence; `sisa certificate verify` checks it offline with the public
        key. `ValidationError` while the request has none yet."""
        req = self.request(request_id)
        if not req.certificate:
            raise ValidationError(f"request {req.request_id} is {req.status.value}: no certificate yet")
        return req.certificate

    def versions(self) -> list[ModelVersion]:
        """Every model version, oldest first (`sisa versions`)."""
        return versions.all_versions(self._open())

    def serving_version(self) -> ModelVersion | None:
        """The model version that serves now (None before the first `train`)."""
        return versions.current(self._open())


def _source(data: Any, name: str) -> Source:
    if isinstance(data, str | Path):
        return read_source(str(data))
    if isinstance(data, Source):
        return data
    if isinstance(data, pa.Table):
        return from_table(data, name)
    return from_dataset(data, name)


def _selector(given: dict[str, str | Iterable[str] | None]) -> tuple[str, list[str]]:
    chosen = {k: v for k, v in given.items() if v is not None}
    if len(chosen) != 1:
        raise ValidationError(f"give exactly one of {', '.join(SELECTORS)}; got {', '.join(chosen) or 'none'}")
    kind, value = next(iter(chosen.items()))
    values = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in values):
        raise ValidationError(f"{kind} should be a string or a list of strings")
    return kind, values
