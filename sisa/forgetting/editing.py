"""The fast edit bridge of a correction (`sisa rectify --fast`): the new value serves in seconds.

Each affected shard starts from its relief checkpoint (its last checkpoint before the corrected
records' slices, which never saw the old text; a fresh adapter on the base when slice 0 is hit)
and takes `unlearning.edit_steps` optimizer steps at `unlearning.edit_lr` on the corrected
records' new text. Each step also replays `unlearning.edit_replay` of the shard's other records
from the slices the relief checkpoint lost (live data the exact retrain trains too; the batch
stays within `training.batch_size`), whose loss is added as a retain term, so the shard's other
people are not forgotten meanwhile. The old text never enters it: the start never saw it,
and the corrected records are taken from the staged new content only (their slice rows are
skipped).

The result is approximate: an `s…-l…-approx<hex>` checkpoint whose parent is the relief
checkpoint and whose own lineage names every record it trained on by its id and its (id, new
content) keyed hashes, so a later deletion of a corrected or replayed record purges it. The
exact retrain supersedes it and the request's purge deletes it (sisa/forgetting/purge.py).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import torch

from sisa.config import SisaConfig
from sisa.data.formats import FORMAT_COLUMN, Item, decode
from sisa.data.sharding import derive_seed
from sisa.forgetting.corrections import formats
from sisa.lineage import checkpoints
from sisa.model import adapters
from sisa.model.base import base_model_fingerprint, load_base_model
from sisa.model.fingerprints import tokenizer_fingerprint
from sisa.model.lengths import model_max_length
from sisa.model.loss import encode_texts
from sisa.model.token_loss import record_nll
from sisa.storage.store import Store
from sisa.training.loop import optimizer_step
from sisa.training.runtime import deterministic_torch
from sisa.training.shard_job import make_optimizer

# (record ids, content sha256, records) of what one shard's edit trains on.
Batch = tuple[list[str], list[str], list[Item]]


def new_records(store: Store, new: pa.Table, rows: pa.Table) -> dict[int, Batch]:
    """Per shard, the corrected records' new content (the staged or validated corrections table),
    decoded in the format each record is stored in (read from the format column alone)."""
    kinds = formats(store, rows)
    shard_of = dict(zip(rows["record_id"].to_pylist(), rows["shard_id"].to_pylist(), strict=True))
    out: dict[int, Batch] = {}
    for rid, text, sha in zip(
        new["record_id"].to_pylist(), new["text"].to_pylist(), new["content_sha256"].to_pylist(), strict=True
    ):
        if rid not in shard_of:
            continue
        ids, shas, items = out.setdefault(int(shard_of[rid]), ([], [], []))
        ids.append(rid)
        shas.append(sha)
        items.append(decode(kinds.get(rid), text))
    return out


def replay_records(store: Store, shard_id: int, from_slice: int, exclude: set[str]) -> Batch:
    """The shard's live records in slices >= `from_slice` but the corrected ones (filtered before
    their text is read into Python): what the relief checkpoint lost."""
    ids: list[str] = []
    shas: list[str] = []
    items: list[Item] = []
    skip = pa.array(sorted(exclude), pa.string())
    for sl in checkpoints.shard_slices(store, shard_id):
        if sl < from_slice:
            continue
        t = store.read_slice(shard_id, sl, columns=["record_id", "text", "content_sha256", FORMAT_COLUMN])
        if t is None:
            continue
        t = t.filter(pc.invert(pc.is_in(t["record_id"], value_set=skip)))
        ids += t["record_id"].to_pylist()
        shas += t["content_sha256"].to_pylist()
        items += [decode(k, x) for k, x in zip(t[FORMAT_COLUMN].to_pylist(), t["text"].to_pylist(), strict=True)]
    return ids, shas, items


def _step_batches(n_new: int, n_replay: int, steps: int, batch_size: int, replay: int, seed: int) -> list[list[int]]:
    """Per step, indices into new + replay: every new record (up to the batch size, cycling), then
    up to `replay` of the replayed ones (within the batch size), drawn with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        take = min(n_new, batch_size)
        idx = [(step * take + i) % n_new for i in range(take)]
        room = min(batch_size - take, replay)
        if room > 0 and n_replay:
            idx += (n_new + torch.randperm(n_replay, generator=g)[:room]).tolist()
        out.append(idx)
    return out


def edit_adapter(
    store: Store, cfg: SisaConfig, shard_id: int, start: str | None, items: list[Item], n_new: int, salt: str
):
    """The start checkpoint (None: a fresh adapter, initialised as the trainer's) after
    `edit_steps` steps on `items` (the first `n_new` are the new records). Returns (model,
    optimizer, final loss, tokenizer fingerprint)."""
    uc = cfg.unlearning
    # The bridge runs alone in the driver before the retrain starts, on the shard jobs' thread count:
    # under load, two threads' small batches wait in OpenMP for the second one (see serving.one_thread):
    # the demo's fast path served after 59 s on two threads at load 3-5, 7.3 s on one at load 3-4.
    with deterministic_torch(cfg.scheduler.threads_per_task):
        base, tokenizer = load_base_model(cfg.model)
        torch.manual_seed(derive_seed(store.seed, shard_id, -1, "init"))
        model = adapters.attach_lora(base, cfg.lora)
        if start is not None:
            with checkpoints.open_checkpoint(store, start) as ckpt:
                adapters.load_adapter_state(model, checkpoints.load_adapter_tensors(ckpt))
        params = adapters.trainable_parameters(model)
        optimizer = make_optimizer(params, cfg)
        seed = derive_seed(store.seed, shard_id, -3, f"edit:{salt}")
        torch.manual_seed(seed)
        device = next(model.parameters()).device
        chunk, clip = cfg.training.loss_chunk_tokens, cfg.training.max_grad_norm
        model.train()
        loss_value = None
        max_length = model_max_length(cfg.training.max_length, base)  # capped by the model's context
        batches = _step_batches(n_new, len(items) - n_new, uc.edit_steps, cfg.training.batch_size, uc.edit_replay, seed)
        for idx in batches:
            enc = encode_texts(tokenizer, [items[i] for i in idx], max_length, cfg.training.loss_on)
            nll, counts = record_nll(model, enc, chunk)
            # The new records' mean token loss, plus the replayed ones' as a retain term: the
            # replay fills the batch but never dilutes what the bridge is for.
            is_new = torch.tensor([i < n_new for i in idx], device=device)
            loss = nll[is_new].sum() / counts[is_new].sum().clamp(min=1)
            if not bool(is_new.all()):
                loss = loss + nll[~is_new].sum() / counts[~is_new].sum().clamp(min=1)
            loss.backward()
            optimizer_step(optimizer, params, uc.edit_lr, clip)
            loss_value = float(loss.detach())
        model.eval()
        return model, optimizer, loss_value, tokenizer_fingerprint(tokenizer)


def edit_shards(
    store: Store,
    cfg: SisaConfig,
    request_id: str,
    new: dict[int, Batch],
    start: dict[int, str | None],
    earliest: dict[int, int],
) -> dict[int, str]:
    """Teach each shard in `new` its corrected records, from `start[shard]` (its relief
    checkpoint; None: a fresh adapter), and save each result as an approximate checkpoint.
    Returns {shard_id: approximate checkpoint_id}."""
    out: dict[int, str] = {}
    for shard in sorted(new):
        ids, shas, items = new[shard]
        parent = start.get(shard)
        if cfg.unlearning.edit_replay > 0:
            r_ids, r_shas, r_items = replay_records(store, shard, earliest.get(shard, 0), set(ids))
        else:
            r_ids, r_shas, r_items = [], [], []
        model, optimizer, loss, tokenizer_fp = edit_adapter(
            store, cfg, shard, parent, items + r_items, len(items), request_id
        )
        trained_ids = ids + r_ids
        record_hashes = store.hash_ids(trained_ids)
        content = checkpoints.content_hashes(store, trained_ids, shas + r_shas)
        pman = checkpoints.read_manifest(store, shard, parent) if parent is not None else {}
        cid = checkpoints.make_approximate_id(parent, shard)
        manifest = {
            "shard_id": shard,
            "slice_idx": checkpoints.slice_of(cid),
            "parent_checkpoint_id": parent,
            "lineage_digest": checkpoints.lineage_digest(pman.get("lineage_digest"), record_hashes + content),
            "training_fingerprint": cfg.training_fingerprint(),
            "config_fingerprint": cfg.fingerprint(),
            "base_model": cfg.model.name,
            "base_model_fingerprint": base_model_fingerprint(cfg.model),
            "tokenizer_fingerprint": tokenizer_fp,
            "approximate": True,
            "edit": {
                "steps": cfg.unlearning.edit_steps,
                "lr": cfg.unlearning.edit_lr,
                "records": len(ids),
                "replayed": len(r_ids),
                "final_loss": loss,
            },
            "request_id": request_id,
        }
        checkpoints.write_checkpoint(
            store, cid, manifest, lambda d, m=model: adapters.save_adapter(m, d), optimizer, record_hashes, content
        )
        out[shard] = cid
    return out
