"""The per-shard trainer: `train_shard(task) -> ShardResult`, a plain picklable function.

For each slice the task names, in order: continue from the previous checkpoint (adapter and
AdamW state), train the shard's LoRA adapter on the slice's records (cumulative: slices 0..j;
incremental: slice j), and save a checkpoint. Ray runs it on a worker; a serial loop runs the
same function in-process. The worker reads its records from the store itself.

A slice trains for `slice_epochs` passes over its records, and for at least `min_slice_steps`
optimizer steps: a small shard's few records would otherwise get a handful of steps and learn
little (issues 10 and 22 measured it), so further seeded passes follow. The default (`auto`) is a
function of the config and the slice index alone, never of how many records a shard holds: a
deletion then never changes how an earlier slice trained, and a replay from scratch takes the
same steps as the first training did.

Determinism: before each slice the torch RNG is seeded from (store seed, shard_id, slice_idx);
the sample order comes from a generator with that seed; torch runs deterministic kernels with a
fixed thread count. The same records and config therefore give the same bytes whether a slice
is trained the first time, retrained after a deletion, or replayed from scratch.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from sisa.config import AUTO_STEPS_PER_EPOCH, SisaConfig, build_config
from sisa.data.formats import FORMAT_COLUMN, Item, decode_rows
from sisa.data.sharding import derive_seed
from sisa.lineage import checkpoints
from sisa.model import adapters
from sisa.model.base import base_model_fingerprint, enable_gradient_checkpointing, load_base_model
from sisa.model.fingerprints import tokenizer_fingerprint
from sisa.model.lengths import model_max_length
from sisa.model.loss import EncodedRecord, encode_records
from sisa.storage.errors import RefusedError
from sisa.storage.faults import maybe_die
from sisa.storage.store import Store
from sisa.training import chain, loop
from sisa.training.runtime import describe_runtime, deterministic_torch, runtime_differences


@dataclass(frozen=True)
class ShardTask:
    store_uri: str
    config: dict[str, Any]  # SisaConfig.to_dict(): plain data crosses process boundaries
    shard_id: int
    slices: tuple[int, ...]  # slices to train, ascending and contiguous
    parent_checkpoint_id: str | None  # the checkpoint before slices[0]; None trains from scratch
    replay_dir: str | None = None  # replay: write the final adapter here, commit nothing
    purpose: str = "train"  # train | forget | replay: names the fault-injection stage
    # Starts every shard's chain anew (`sisa train --from-scratch`): a shard trained from slice 0
    # need not match the serving version's training config (sisa/training/chain.py).
    fresh_chain: bool = False


@dataclass
class SliceResult:
    slice_idx: int
    checkpoint_id: str | None
    records: int
    steps: int
    tokens: int
    loss: float | None
    reused: bool = False  # its checkpoint existed (a retried or resumed job): not trained again
    losses: list[float] = field(default_factory=list)  # each optimizer step's loss (for MLflow's curves)
    lrs: list[float] = field(default_factory=list)  # each optimizer step's learning rate
    cut: int = 0  # records of the slice's training set longer than max_length, cut (loss.fit_window)


@dataclass
class ShardResult:
    shard_id: int
    slices: list[SliceResult] = field(default_factory=list)
    wall_s: float = 0.0
    tokens: int = 0
    node: str = ""  # where the job ran: the Ray node id, or "local" (set by sisa/training/scheduler.py)
    structured: bool = False  # it trained prompt-completion or chat records (not only text)
    warnings: list[str] = field(default_factory=list)  # raised while it trained, for the driver to show

    @property
    def last_checkpoint_id(self) -> str | None:
        return self.slices[-1].checkpoint_id if self.slices else None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mean_loss(self) -> float | None:
        losses = [s.loss for s in self.slices if s.loss is not None]
        return sum(losses) / len(losses) if losses else None


def slice_epochs(epochs: int, slice_idx: int, mode: str) -> float:
    """Epochs for slice j. Cumulative mode rescales them as the SISA paper does (2e/(R+1) keeps
    the total cost near e epochs over the shard), but as 2e/(j+2): a function of j alone, so that
    slices added later never change how an earlier slice was trained (or replayed)."""
    if mode == "incremental":
        return float(epochs)
    return 2.0 * epochs / (slice_idx + 2)


def slice_samples(n: int, epochs: float, batch_size: int, min_steps: int = 0) -> int:
    """Records drawn for one slice of n: `round(epochs * n)` (at least 1), raised to
    `min_steps * batch_size` so the slice gets at least `min_steps` optimizer steps."""
    if n == 0:
        return 0
    return max(1, round(epochs * n), min_steps * batch_size)


def pass_steps(epochs: int, slice_idx: int, mode: str) -> int:
    """AUTO_STEPS_PER_EPOCH steps for each of slice j's passes, rounded up: ceil(K * e_j), in
    integers (e_j is 2 * epochs / (j + 2) in cumulative mode; in floats 3 * 20/3 is 20.000...04)."""
    if mode == "incremental":
        return AUTO_STEPS_PER_EPOCH * epochs
    return -(-2 * AUTO_STEPS_PER_EPOCH * epochs // (slice_idx + 2))


def min_slice_steps(
    setting: int | str, slice_idx: int, epochs: int, mode: str, batch_size: int, slice_size: int
) -> int:
    """The fewest optimizer steps slice j trains (`training.min_steps_per_slice`). An int is itself;
    `auto` is the steps a full slice j would take (`slice_size` records a slice), and at least
    `pass_steps`: so a shard smaller than a slice trains as long as a full one whatever S is, and a
    slice no larger than a batch still gets several steps a pass.

    Only the config and j enter, never the shard's records: a deletion changes a shard's counts,
    and an earlier slice's steps (kept in its checkpoint) must stay what a replay computes."""
    if setting != "auto":
        return int(setting)
    full = slice_size * (slice_idx + 1 if mode == "cumulative" else 1)
    full_steps = -(-slice_samples(full, slice_epochs(epochs, slice_idx, mode), batch_size) // batch_size)
    return max(full_steps, pass_steps(epochs, slice_idx, mode))


def config_min_steps(cfg: SisaConfig, slice_idx: int) -> int:
    """`min_slice_steps` under this config: what the trainer trains and the planner charges."""
    t, s = cfg.training, cfg.sharding
    return min_slice_steps(t.min_steps_per_slice, slice_idx, t.epochs, s.slice_mode, t.effective_batch, s.slice_size)


def slice_steps(n: int, slice_idx: int, cfg: SisaConfig) -> int:
    """Optimizer steps of training slice j on n records under this config (the trainer's count)."""
    epochs = slice_epochs(cfg.training.epochs, slice_idx, cfg.sharding.slice_mode)
    bs = cfg.training.effective_batch
    return -(-slice_samples(n, epochs, bs, config_min_steps(cfg, slice_idx)) // bs)


def sample_order(n: int, total: int, seed: int) -> list[int]:
    """`total` indices: seeded permutations of range(n), concatenated and cut."""
    if n == 0 or total <= 0:
        return []
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while len(out) < total:
        out.extend(torch.randperm(n, generator=g).tolist())
    return out[:total]


@dataclass
class SliceRecords:
    """What one read of a slice gives: the records to train (slices 0..j in cumulative mode) with
    their ids and content hashes; slice j's own rows, from `new_from` on, become the checkpoint's
    lineage. One read, so the lineage is exactly what trained: a request that holds a record after
    it does not change either."""

    items: list[Item]
    ids: list[str]
    shas: list[str]
    new_from: int = 0

    @property
    def new_ids(self) -> list[str]:
        return self.ids[self.new_from :]

    @property
    def new_shas(self) -> list[str]:
        return self.shas[self.new_from :]


SLICE_COLUMNS = ["record_id", "text", FORMAT_COLUMN, "content_sha256"]


def read_slice_records(store: Store, shard_id: int, slice_idx: int, mode: str) -> SliceRecords:
    out = SliceRecords([], [], [])
    for sl in range(slice_idx + 1) if mode == "cumulative" else [slice_idx]:
        t = store.read_slice(shard_id, sl, columns=SLICE_COLUMNS)
        if sl == slice_idx:
            out.new_from = len(out.ids)
        if t is None:
            continue
        out.items.extend(decode_rows(t["text"].to_pylist(), t[FORMAT_COLUMN].to_pylist()))
        out.ids.extend(t["record_id"].to_pylist())
        out.shas.extend(t["content_sha256"].to_pylist())
    return out


class EncodingCache:
    """Each record of a job tokenized once: cumulative slices read slices 0..j again at every j,
    and the same (record id, content) is the same tokens under one tokenizer and config."""

    def __init__(self, tokenizer, cfg: SisaConfig, max_length: int):
        self.tokenizer, self.cfg, self.max_length = tokenizer, cfg, max_length
        self.done: dict[tuple[str, str], EncodedRecord] = {}

    def encode(self, data: SliceRecords) -> list[EncodedRecord]:
        keys = list(zip(data.ids, data.shas, strict=True))
        todo = [i for i, k in enumerate(keys) if k not in self.done]
        t = self.cfg.training
        items = [data.items[i] for i in todo]
        for i, rec in zip(
            todo, encode_records(self.tokenizer, items, self.max_length, t.loss_on, t.prompt_loss_weight), strict=True
        ):
            self.done[keys[i]] = rec
        return [self.done[k] for k in keys]


def make_optimizer(params: list[torch.nn.Parameter], cfg: SisaConfig) -> torch.optim.Optimizer:
    # foreach=False: the single-tensor path is the same on every thread count and device count.
    return torch.optim.AdamW(params, lr=cfg.training.lr, weight_decay=cfg.training.weight_decay, foreach=False)


def train_shard(task: ShardTask) -> ShardResult:
    cfg = build_config(task.config)
    caught: list[str] = []
    with deterministic_torch(cfg.scheduler.threads_per_task, caught):
        result = _train_shard(task, cfg)
    result.warnings = caught
    return result


@dataclass
class _Job:
    """One shard job's model state and what it is checked against before training on it."""

    task: ShardTask
    cfg: SisaConfig
    store: Store
    model: Any
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    tokenizer_fp: str
    runtime: dict[str, Any]
    loaded: str | None = None  # the checkpoint whose state the model holds (None: fresh adapter)
    started: bool = False  # the model's state was checked and set up for training


def _train_shard(task: ShardTask, cfg: SisaConfig) -> ShardResult:
    started = time.perf_counter()
    store = Store.open(task.store_uri)
    result = ShardResult(task.shard_id)
    base, tokenizer = load_base_model(cfg.model)
    param = next(base.parameters())
    base_fp = base_model_fingerprint(cfg.model)
    training_fp = cfg.training_fingerprint()
    runtime = describe_runtime(param.device, param.dtype, cfg.scheduler.threads_per_task)
    job = _new_job(task, cfg, store, base, tokenizer_fingerprint(tokenizer), runtime)
    cache = EncodingCache(tokenizer, cfg, model_max_length(cfg.training.max_length, base))
    parent_id, parent_lineage = task.parent_checkpoint_id, _lineage_of(store, task.parent_checkpoint_id)

    # A bar per shard over its slices; silent when stderr is not a terminal (Ray workers, CI, logs).
    bar = tqdm(
        task.slices, desc=f"shard {task.shard_id} slices", unit="slice", leave=False, disable=not sys.stderr.isatty()
    )
    for slice_idx in bar:
        seed = derive_seed(store.seed, task.shard_id, slice_idx)
        data = read_slice_records(store, task.shard_id, slice_idx, cfg.sharding.slice_mode)
        maybe_die("slice-read")
        record_hashes = store.hash_ids(data.new_ids)
        record_content_hashes = checkpoints.content_hashes(store, data.new_ids, data.new_shas)
        # The content hashes enter the digest: a rectified record gives a new checkpoint id.
        lineage = checkpoints.lineage_digest(parent_lineage, record_hashes + record_content_hashes)
        ckpt_id = checkpoints.make_checkpoint_id(task.shard_id, slice_idx, parent_id, lineage, training_fp, base_fp)
        result.structured = result.structured or any(not isinstance(t, str) for t in data.items)
        if task.replay_dir is None and checkpoints.exists(store, ckpt_id):
            # A retried or resumed job: this slice's checkpoint is already there (its id is its
            # content address), so it is not trained again; a later slice starts from its state.
            sr = SliceResult(slice_idx, ckpt_id, len(data.new_ids), 0, 0, None, reused=True)
        else:
            _ready(job, parent_id)
            torch.manual_seed(seed)
            encoded = cache.encode(data)
            plan = slice_plan(encoded, slice_idx, cfg, seed)
            steps = loop.run_plan(
                job.model,
                job.optimizer,
                job.params,
                encoded,
                plan,
                cfg.training,
                tokenizer.pad_token_id,
                param.device,
                param.dtype,
            )
            sr = SliceResult(
                slice_idx,
                None,
                len(data.new_ids),
                len(plan.steps),
                steps.tokens,
                steps.mean_loss,
                losses=steps.losses,
                lrs=steps.lrs,
                cut=sum(r.cut for r in encoded),
            )
            if task.replay_dir is None:
                manifest = _manifest(job, slice_idx, parent_id, lineage, seed, sr, len(data.items), base_fp)
                manifest["step_plan_digest"] = plan.digest()
                manifest["trained_tokens"] = steps.trained_tokens
                save = lambda d: adapters.save_adapter(job.model, d)  # noqa: E731 - the adapter, into the staged folder
                checkpoints.write_checkpoint(
                    store, ckpt_id, manifest, save, job.optimizer, record_hashes, record_content_hashes
                )
            job.loaded = ckpt_id
        sr.checkpoint_id = ckpt_id
        result.tokens += sr.tokens
        result.slices.append(sr)
        parent_id, parent_lineage = ckpt_id, lineage
        maybe_die("train-between-slices" if task.purpose == "train" else f"{task.purpose}-during-retrain")

    if task.replay_dir is not None:
        out = os.path.join(task.replay_dir, f"shard={task.shard_id:05d}")
        os.makedirs(out, exist_ok=True)
        adapters.save_adapter(job.model, out)
    result.wall_s = time.perf_counter() - started
    return result


def _manifest(
    job: _Job,
    slice_idx: int,
    parent: str | None,
    lineage: str,
    seed: int,
    sr: SliceResult,
    trained: int,
    base_fp: str,
) -> dict[str, Any]:
    cfg = job.cfg
    return {
        "shard_id": job.task.shard_id,
        "slice_idx": slice_idx,
        "parent_checkpoint_id": parent,
        "lineage_digest": lineage,
        "records_in_slice": sr.records,
        "records_trained": trained,
        "slice_mode": cfg.sharding.slice_mode,
        "seed": seed,
        "steps": sr.steps,
        "loss": sr.loss,
        "training_fingerprint": cfg.training_fingerprint(),
        "training_config": cfg.training_sections(),
        "runtime": job.runtime,
        "config_fingerprint": cfg.fingerprint(),
        "base_model": cfg.model.name,
        "base_model_fingerprint": base_fp,
        "tokenizer_fingerprint": job.tokenizer_fp,
    }


def _lineage_of(store: Store, checkpoint_id: str | None) -> str | None:
    if checkpoint_id is None:
        return None
    return checkpoints.read_manifest(store, checkpoints.shard_of(checkpoint_id), checkpoint_id)["lineage_digest"]


def _new_job(task: ShardTask, cfg: SisaConfig, store: Store, base, tokenizer_fp: str, runtime: dict[str, Any]) -> _Job:
    """A fresh adapter whose init is seeded by (seed, shard), and its optimizer."""
    torch.manual_seed(derive_seed(store.seed, task.shard_id, -1, "init"))
    model = adapters.attach_lora(base, cfg.lora)
    if cfg.training.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    params = adapters.trainable_parameters(model)
    return _Job(task, cfg, store, model, params, make_optimizer(params, cfg), tokenizer_fp, runtime)


def _ready(job: _Job, parent_id: str | None) -> None:
    """Before training a slice on top of `parent_id` (None: a fresh adapter): load its adapter and
    optimizer state unless the model holds it already, after the checks that it may be continued
    here: the same training config, tokenizer and runtime."""
    if job.started and job.loaded == parent_id:
        return
    job.started, job.loaded = True, parent_id
    if parent_id is None:
        chain.check_continuation(job.store, job.cfg, job.task.shard_id, None, job.task.fresh_chain)
        return
    with checkpoints.open_checkpoint(job.store, parent_id) as parent:
        chain.check_continuation(job.store, job.cfg, job.task.shard_id, parent.manifest, job.task.fresh_chain)
        _check_tokenizer(parent.manifest, job.tokenizer_fp, job.task.shard_id, parent_id, job.cfg.model.name)
        _check_runtime(parent.manifest, job, parent_id)
        adapters.load_adapter_state(job.model, checkpoints.load_adapter_tensors(parent))
        opt_tensors, opt_meta = checkpoints.load_optimizer_state(parent)
        checkpoints.tensors_to_optimizer(job.optimizer, opt_tensors, opt_meta)


def _check_runtime(parent_manifest: dict, job: _Job, parent_id: str) -> None:
    """Refuse to continue a chain on another runtime than its last checkpoint's, unless
    `model.runtime_change: allow`: the same data and seeds give other bytes there, so neither the
    chain nor a replay of it could be reproduced."""
    diff = runtime_differences(parent_manifest.get("runtime"), job.runtime)
    if diff and job.cfg.model.runtime_change != "allow":
        raise RefusedError(
            f"shard {job.task.shard_id}'s checkpoint {parent_id} was trained on another runtime ({'; '.join(diff)}); "
            "continuing here would make a chain no replay reproduces bit for bit. Run where it was trained, set "
            "model.runtime_change=allow to continue anyway (the checkpoints record both runtimes), or retrain every "
            "shard here with `sisa train --from-scratch`"
        )


def _check_tokenizer(parent_manifest: dict, tokenizer_fp: str, shard_id: int, parent_id: str, model_name: str) -> None:
    """Refuse to continue from a checkpoint whose records were tokenized or rendered with another
    tokenizer or chat template: the adapter would mix two renderings of the data, and a replay
    could never reproduce it. Checkpoints written before the fingerprint existed carry none."""
    recorded = parent_manifest.get("tokenizer_fingerprint")
    if recorded is not None and recorded != tokenizer_fp:
        raise RefusedError(
            f"shard {shard_id}'s checkpoint {parent_id} was trained with another tokenizer or chat template than "
            f"model {model_name!r} has now (tokenizer fingerprint {recorded[:12]}... vs {tokenizer_fp[:12]}...); "
            "restore the model folder's tokenizer files, or run `sisa train --from-scratch`"
        )


def slice_plan(encoded: list[EncodedRecord], slice_idx: int, cfg: SisaConfig, seed: int) -> loop.StepPlan:
    """Slice j's step plan: `slice_samples` draws of its records (seeded passes, at least the
    slice's minimum steps), cut into optimizer steps by the engine."""
    t = cfg.training
    epochs = slice_epochs(t.epochs, slice_idx, cfg.sharding.slice_mode)
    total = slice_samples(len(encoded), epochs, t.effective_batch, config_min_steps(cfg, slice_idx))
    order = sample_order(len(encoded), total, seed)
    return loop.plan_steps([len(r.input_ids) for r in encoded], order, t, seed)
