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

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from sisa.config import AUTO_STEPS_PER_EPOCH, SisaConfig, build_config
from sisa.data.formats import FORMAT_COLUMN, Item, decode_rows
from sisa.data.sharding import derive_seed
from sisa.lineage import checkpoints
from sisa.model import adapters
from sisa.model.base import base_model_fingerprint, load_base_model
from sisa.model.fingerprints import tokenizer_fingerprint
from sisa.model.loss import encode_texts
from sisa.storage.errors import RefusedError
from sisa.storage.faults import maybe_die
from sisa.storage.store import Store


@dataclass(frozen=True)
class ShardTask:
    store_uri: str
    config: dict[str, Any]  # SisaConfig.to_dict(): plain data crosses process boundaries
    shard_id: int
    slices: tuple[int, ...]  # slices to train, ascending and contiguous
    parent_checkpoint_id: str | None  # the checkpoint before slices[0]; None trains from scratch
    replay_dir: str | None = None  # replay: write the final adapter here, commit nothing
    purpose: str = "train"  # train | forget | replay: names the fault-injection stage


@dataclass
class SliceResult:
    slice_idx: int
    checkpoint_id: str | None
    records: int
    steps: int
    tokens: int
    loss: float | None


@dataclass
class ShardResult:
    shard_id: int
    slices: list[SliceResult] = field(default_factory=list)
    wall_s: float = 0.0
    tokens: int = 0
    node: str = ""  # where the job ran: the Ray node id, or "local" (set by sisa/training/scheduler.py)
    structured: bool = False  # it trained prompt-completion or chat records (not only text)

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
    return min_slice_steps(t.min_steps_per_slice, slice_idx, t.epochs, s.slice_mode, t.batch_size, s.slice_size)


def slice_steps(n: int, slice_idx: int, cfg: SisaConfig) -> int:
    """Optimizer steps of training slice j on n records under this config (the trainer's count)."""
    epochs = slice_epochs(cfg.training.epochs, slice_idx, cfg.sharding.slice_mode)
    bs = cfg.training.batch_size
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


def _records(store: Store, shard_id: int, slices: list[int]) -> tuple[list[str], list[Item]]:
    """(record ids, records as the encoder takes them: a text record's str or an Example)."""
    ids: list[str] = []
    items: list[Item] = []
    for sl in slices:
        t = store.read_slice(shard_id, sl, columns=["record_id", "text", FORMAT_COLUMN])
        if t is not None:
            ids.extend(t["record_id"].to_pylist())
            items.extend(decode_rows(t["text"].to_pylist(), t[FORMAT_COLUMN].to_pylist()))
    return ids, items


def _column(store: Store, shard_id: int, slices: list[int], column: str) -> tuple[list[str], list[str]]:
    """Record ids and one stored column (`content_sha256`, for lineage) of these slices."""
    ids: list[str] = []
    values: list[str] = []
    for sl in slices:
        t = store.read_slice(shard_id, sl, columns=["record_id", column])
        if t is not None:
            ids.extend(t["record_id"].to_pylist())
            values.extend(t[column].to_pylist())
    return ids, values


def make_optimizer(params: list[torch.nn.Parameter], cfg: SisaConfig) -> torch.optim.Optimizer:
    # foreach=False: the single-tensor path is the same on every thread count and device count.
    return torch.optim.AdamW(params, lr=cfg.training.lr, weight_decay=cfg.training.weight_decay, foreach=False)


@contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count while the block runs; the caller's settings
    come back afterwards (a serial shard job or the fast path runs in the caller's process)."""
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    warn_only_before = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before, warn_only=warn_only_before)


def train_shard(task: ShardTask) -> ShardResult:
    cfg = build_config(task.config)
    with deterministic_torch(cfg.scheduler.threads_per_task):
        return _train_shard(task, cfg)


def _train_shard(task: ShardTask, cfg: SisaConfig) -> ShardResult:
    started = time.perf_counter()
    store = Store.open(task.store_uri)
    result = ShardResult(task.shard_id)
    base, tokenizer = load_base_model(cfg.model)
    device = next(base.parameters()).device
    base_fp = base_model_fingerprint(cfg.model)
    tokenizer_fp = tokenizer_fingerprint(tokenizer)
    training_fp = cfg.training_fingerprint()

    model, params, optimizer, parent_lineage = _start(task, cfg, store, base, tokenizer_fp)
    parent_id = task.parent_checkpoint_id

    # A bar per shard over its slices; silent when stderr is not a terminal (Ray workers, CI, logs).
    bar = tqdm(
        task.slices, desc=f"shard {task.shard_id} slices", unit="slice", leave=False, disable=not sys.stderr.isatty()
    )
    for slice_idx in bar:
        seed = derive_seed(store.seed, task.shard_id, slice_idx)
        torch.manual_seed(seed)
        data_slices = list(range(slice_idx + 1)) if cfg.sharding.slice_mode == "cumulative" else [slice_idx]
        _, texts = _records(store, task.shard_id, data_slices)
        result.structured = result.structured or any(not isinstance(t, str) for t in texts)
        new_ids, new_shas = _column(store, task.shard_id, [slice_idx], "content_sha256")
        epochs = slice_epochs(cfg.training.epochs, slice_idx, cfg.sharding.slice_mode)
        total = slice_samples(len(texts), epochs, cfg.training.batch_size, config_min_steps(cfg, slice_idx))
        order = sample_order(len(texts), total, seed)
        sr = _train_steps(model, optimizer, params, tokenizer, texts, order, cfg, device)
        sr.slice_idx = slice_idx
        sr.records = len(new_ids)
        result.tokens += sr.tokens

        record_hashes = store.hash_ids(new_ids)
        record_content_hashes = checkpoints.content_hashes(store, new_ids, new_shas)
        # The content hashes enter the digest: a rectified record gives a new checkpoint id.
        lineage = checkpoints.lineage_digest(parent_lineage, record_hashes + record_content_hashes)
        ckpt_id = checkpoints.make_checkpoint_id(task.shard_id, slice_idx, parent_id, lineage, training_fp, base_fp)
        if task.replay_dir is None:
            manifest = {
                "shard_id": task.shard_id,
                "slice_idx": slice_idx,
                "parent_checkpoint_id": parent_id,
                "lineage_digest": lineage,
                "records_in_slice": len(new_ids),
                "records_trained": len(texts),
                "slice_mode": cfg.sharding.slice_mode,
                "seed": seed,
                "steps": sr.steps,
                "loss": sr.loss,
                "training_fingerprint": training_fp,
                "config_fingerprint": cfg.fingerprint(),
                "base_model": cfg.model.name,
                "base_model_fingerprint": base_fp,
                "tokenizer_fingerprint": tokenizer_fp,
            }
            save = lambda d: adapters.save_adapter(model, d)  # noqa: E731 - the adapter, into the staged folder
            checkpoints.write_checkpoint(
                store, ckpt_id, manifest, save, optimizer, record_hashes, record_content_hashes
            )
        sr.checkpoint_id = ckpt_id
        result.slices.append(sr)
        parent_id, parent_lineage = ckpt_id, lineage
        maybe_die("train-between-slices" if task.purpose == "train" else f"{task.purpose}-during-retrain")

    if task.replay_dir is not None:
        out = os.path.join(task.replay_dir, f"shard={task.shard_id:05d}")
        os.makedirs(out, exist_ok=True)
        adapters.save_adapter(model, out)
    result.wall_s = time.perf_counter() - started
    return result


def _start(task: ShardTask, cfg: SisaConfig, store: Store, base, tokenizer_fp: str):
    """(model, trainable params, optimizer, the parent's lineage digest): the parent checkpoint's
    adapter and optimizer state, or a fresh adapter whose init is seeded by (seed, shard)."""
    torch.manual_seed(derive_seed(store.seed, task.shard_id, -1, "init"))
    model = adapters.attach_lora(base, cfg.lora)
    params = adapters.trainable_parameters(model)
    optimizer = make_optimizer(params, cfg)
    parent_id = task.parent_checkpoint_id
    if parent_id is None:
        return model, params, optimizer, None
    with checkpoints.open_checkpoint(store, parent_id) as parent:
        adapters.load_adapter_state(model, checkpoints.load_adapter_tensors(parent))
        opt_tensors, opt_meta = checkpoints.load_optimizer_state(parent)
        checkpoints.tensors_to_optimizer(optimizer, opt_tensors, opt_meta)
        _check_tokenizer(parent.manifest, tokenizer_fp, task.shard_id, parent_id, cfg.model.name)
        return model, params, optimizer, parent.manifest["lineage_digest"]


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


def _train_steps(
    model, optimizer, params, tokenizer, texts: list[Item], order: list[int], cfg: SisaConfig, device
) -> SliceResult:
    model.train()
    bs = cfg.training.batch_size
    steps = tokens = 0
    loss_sum = 0.0
    for start in range(0, len(order), bs):
        batch_idx = order[start : start + bs]
        enc = encode_texts(tokenizer, [texts[i] for i in batch_idx], cfg.training.max_length, cfg.training.loss_on)
        enc = {k: v.to(device) for k, v in enc.items()}
        out = model(**enc)
        out.loss.backward()
        if cfg.training.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.training.max_grad_norm, foreach=False)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
        tokens += int(enc["attention_mask"].sum())
        loss_sum += float(out.loss.detach())
    model.eval()
    loss = loss_sum / steps if steps else None
    if loss is not None and not math.isfinite(loss):
        from sisa.storage.errors import ShardJobError

        raise ShardJobError(f"training diverged (loss {loss}); lower training.lr", [])
    return SliceResult(-1, None, 0, steps, tokens, loss)
