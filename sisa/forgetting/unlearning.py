"""The approximate fast path: unlearn records from one shard's current adapter in seconds.

NPO (Zhang et al. 2024, "Negative Preference Optimization") pushes the adapter's likelihood of
the records being forgotten below the reference (the adapter before unlearning), with a bounded
loss that does not collapse the model like plain gradient ascent; `graddiff` is gradient ascent
on the forget set plus descent on retained data. Both add a retain term on the shard's remaining
records so the rest of what the shard learned moves little.

This is approximate: it proves nothing. The forget texts live in memory only, in this process,
and the resulting adapter is tainted (its own lineage names the records it read, forgotten and
retained): the exact retrain supersedes it and the purge deletes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sisa.config import SisaConfig
from sisa.data.formats import FORMAT_COLUMN, Item, decode
from sisa.data.sharding import derive_seed
from sisa.forgetting.record_texts import read_texts
from sisa.lineage import checkpoints
from sisa.model import adapters
from sisa.model.base import load_base_model
from sisa.model.lengths import model_max_length
from sisa.model.loss import encode_texts
from sisa.model.token_loss import record_nll
from sisa.storage.store import Store
from sisa.training.loop import optimizer_step
from sisa.training.runtime import deterministic_torch
from sisa.training.shard_job import make_optimizer


def retain_records(store: Store, shard_id: int, exclude: set[str], limit: int = 256) -> tuple[list[str], list[Item]]:
    """(record ids, records) of up to `limit` of the shard's remaining records, newest slices
    first (what the adapter learned last is what an unlearning step disturbs most); reads only
    the slices it needs. A record is a text record's str or a prompt-completion/chat Example."""
    ids: list[str] = []
    texts: list[Item] = []
    for sl in reversed(checkpoints.shard_slices(store, shard_id)):
        t = store.read_slice(shard_id, sl, columns=["record_id", "text", FORMAT_COLUMN])
        if t is None:
            continue
        for rid, text, kind in zip(
            t["record_id"].to_pylist(), t["text"].to_pylist(), t[FORMAT_COLUMN].to_pylist(), strict=True
        ):
            if rid not in exclude:
                ids.append(rid)
                texts.append(decode(kind, text))
        if len(ids) >= limit:
            break
    return ids[:limit], texts[:limit]


def _seq_logp(model, batch: dict[str, torch.Tensor], chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each record's summed log-probability of its trained tokens, and their count."""
    sums, counts = record_nll(model, batch, chunk)
    return -sums, counts


def unlearn_adapter(
    store: Store,
    cfg: SisaConfig,
    checkpoint_id: str,
    forget_texts: list[Item],
    retain_texts: list[Item],
    salt: str,
):
    """Load a shard checkpoint, run `cfg.unlearning.steps` steps, return (peft model, optimizer, losses)."""
    uc = cfg.unlearning
    # The fast path runs alone in the driver before the retrain starts, on the shard jobs' thread count:
    # under load, two threads' small batches wait in OpenMP for the second one (see serving.one_thread):
    # the demo's fast path served after 59 s on two threads at load 3-5, 7.3 s on one at load 3-4.
    with deterministic_torch(cfg.scheduler.threads_per_task):
        base, tokenizer = load_base_model(cfg.model)
        model = adapters.attach_lora(base, cfg.lora)
        with checkpoints.open_checkpoint(store, checkpoint_id) as ckpt:
            adapters.load_adapter_state(model, checkpoints.load_adapter_tensors(ckpt))
        params = adapters.trainable_parameters(model)
        optimizer = make_optimizer(params, cfg)
        chunk, clip = cfg.training.loss_chunk_tokens, cfg.training.max_grad_norm
        shard_id = ckpt.manifest["shard_id"]
        g = torch.Generator().manual_seed(derive_seed(store.seed, shard_id, -2, f"unlearn:{salt}"))
        max_length = model_max_length(cfg.training.max_length, base)  # capped by the model's context
        forget = encode_texts(tokenizer, forget_texts, max_length, cfg.training.loss_on)
        with torch.no_grad():
            model.eval()
            ref_logp, _ = _seq_logp(model, forget, chunk)
        model.train()
        bs = cfg.training.batch_size
        history = []
        for _ in range(uc.steps):
            logp, count = _seq_logp(model, forget, chunk)
            if uc.method == "npo":
                forget_loss = -(2.0 / uc.beta) * F.logsigmoid(-uc.beta * (logp - ref_logp)).mean()
            else:
                forget_loss = (logp / count).mean()  # ascent on the forget NLL = descent on its log-prob
            loss = forget_loss
            if retain_texts and uc.retain_weight > 0:
                idx = torch.randint(len(retain_texts), (min(bs, len(retain_texts)),), generator=g).tolist()
                retain = encode_texts(tokenizer, [retain_texts[i] for i in idx], max_length, cfg.training.loss_on)
                rlogp, rcount = _seq_logp(model, retain, chunk)
                loss = loss + uc.retain_weight * (-(rlogp / rcount).mean())
            loss.backward()
            optimizer_step(optimizer, params, uc.lr, clip)
            history.append(float(loss.detach()))
        model.eval()
        return model, optimizer, history


def unlearn_shards(
    store: Store, cfg: SisaConfig, request_id: str, rows, serving_shards: dict[int, str]
) -> dict[int, str]:
    """Unlearn the selected records from every affected shard's serving adapter, in this process
    (the texts never leave it), and save each result as an approximate checkpoint whose parent is
    the serving one and whose own lineage names every record it read, so the purge removes it.
    Returns the new {shard_id: checkpoint_id} map."""
    deleted = set(rows["record_id"].to_pylist())
    new_shards = dict(serving_shards)
    affected = sorted({int(s) for s in rows["shard_id"].to_pylist()} & set(serving_shards))
    for shard in affected:
        shard_rows = rows.filter(rows["shard_id"].to_numpy() == shard) if rows.num_rows else rows
        texts, _ = read_texts(store, shard_rows)
        retain_ids, retain = retain_records(store, shard, deleted)
        parent = serving_shards[shard]
        model, optimizer, history = unlearn_adapter(store, cfg, parent, texts, retain, request_id)
        pman = checkpoints.read_manifest(store, shard, parent)
        cid = checkpoints.make_approximate_id(parent)
        manifest = {
            **{
                k: pman[k]
                for k in (
                    "shard_id",
                    "slice_idx",
                    "lineage_digest",
                    "training_fingerprint",
                    "config_fingerprint",
                    "base_model",
                    "base_model_fingerprint",
                )
            },
            "parent_checkpoint_id": parent,
            "approximate": True,
            "unlearning": {
                "method": cfg.unlearning.method,
                "steps": cfg.unlearning.steps,
                "final_loss": history[-1] if history else None,
            },
            "request_id": request_id,
        }
        # Its own lineage names every record whose text the unlearning read, the forgotten ones
        # included: gradient ascent on a text is influence of that text. The purge of this request
        # (or of any later one) finds it by its own lineage even when its parent never saw the
        # records (a relief checkpoint serving, or records not trained yet).
        read = store.hash_ids(shard_rows["record_id"].to_pylist() + retain_ids)
        checkpoints.write_checkpoint(
            store, cid, manifest, lambda d, m=model: adapters.save_adapter(m, d), optimizer, read
        )
        new_shards[shard] = cid
    return new_shards
