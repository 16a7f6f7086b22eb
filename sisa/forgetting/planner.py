"""Deletion planning and lineage checks: pure functions over ids, counts and checkpoint graphs.

A plan answers, before anything is touched: which shards hold the records, the earliest slice
hit in each (the retrain restarts from the checkpoint before it), how many records go, and what
the retrain costs as a fraction of a full retrain. Cost is counted in record-passes with the
same epoch schedule the trainer uses (minimum steps per slice included), so it is a fair
prediction of the time ratio.
"""

from __future__ import annotations

from sisa.lineage.requests_ledger import DeletionPlan, ShardPlan
from sisa.training.shard_job import min_slice_steps, slice_epochs


def slice_cost(
    counts: dict[int, int],
    slice_idx: int,
    epochs: int,
    mode: str,
    batch_size: int = 1,
    min_steps: int | str = 0,
    slice_size: int = 0,
) -> float:
    """Record-passes of training one slice (counts: slice → records after the deletion); with
    `min_steps` (`training.min_steps_per_slice`: a number, or `auto` with `slice_size`, as the
    trainer reads it), a slice too small for that many steps of `batch_size` costs the extra passes."""
    n = sum(c for s, c in counts.items() if s <= slice_idx) if mode == "cumulative" else counts.get(slice_idx, 0)
    cost = slice_epochs(epochs, slice_idx, mode) * n
    steps = min_slice_steps(min_steps, slice_idx, epochs, mode, batch_size, slice_size)
    return max(cost, float(steps * batch_size)) if n and steps else cost


def plan_deletion(
    selector_kind: str,
    hits: list[tuple[int, int]],
    counts_after: dict[int, dict[int, int]],
    num_shards: int,
    epochs: int,
    mode: str,
    batch_size: int = 1,
    min_steps: int | str = 0,
    slice_size: int = 0,
) -> DeletionPlan:
    """`hits`: (shard_id, slice_idx) of each record to delete; `counts_after[shard][slice]`: records
    each slice will hold after the deletion (every slice of every shard, empty ones as 0).
    `batch_size`, `min_steps` and `slice_size` are `training.batch_size`,
    `training.min_steps_per_slice` and `sharding.slice_size`."""
    by_shard: dict[int, list[int]] = {}
    for shard, sl in hits:
        by_shard.setdefault(shard, []).append(sl)
    plan = DeletionPlan(selector_kind, len(hits))
    for shard in range(num_shards):
        slices = counts_after.get(shard, {})
        last = max(slices, default=-1)
        for sl in slices:
            plan.full_cost += slice_cost(slices, sl, epochs, mode, batch_size, min_steps, slice_size)
        if shard not in by_shard:
            if slices:
                plan.unaffected_shards.append(shard)
            continue
        hit = sorted(set(by_shard[shard]))
        plan.shards.append(ShardPlan(shard, hit[0], max(last, hit[-1]), len(by_shard[shard]), hit))
        for sl in range(hit[0], last + 1):
            plan.retrain_cost += slice_cost(slices, sl, epochs, mode, batch_size, min_steps, slice_size)
    return plan


def expected_cost_fraction(num_slices: int, mode: str, epochs: int = 1) -> float:
    """Expected retrain fraction for one shard of S when the hit slice is uniform over R equal
    slices; multiply by 1/S for the whole model."""
    counts = dict.fromkeys(range(num_slices), 1)
    full = sum(slice_cost(counts, j, epochs, mode) for j in range(num_slices))
    total = 0.0
    for hit in range(num_slices):
        total += sum(slice_cost(counts, j, epochs, mode) for j in range(hit, num_slices))
    return total / num_slices / full if full else 0.0


def tainted_checkpoints(parents: dict[str, str | None], own_hits: set[str]) -> set[str]:
    """Checkpoints whose lineage holds a deleted record: those that trained one (`own_hits`) and
    every descendant of them (a child continues from its parent's weights)."""
    children: dict[str, list[str]] = {}
    for cid, parent in parents.items():
        if parent:
            children.setdefault(parent, []).append(cid)
    out: set[str] = set()
    stack = list(own_hits)
    while stack:
        cid = stack.pop()
        if cid in out:
            continue
        out.add(cid)
        stack.extend(children.get(cid, []))
    return out
