"""Each lever of the trainer (issue 32) on its own: training, a deletion and `sisa verify --replay`
stay bit-exact on CPU; the checkpoint records the step plan; MLflow gets the per-step curves.
(All of them at once: `test_forget.py`'s exactness test, case every-trainer-feature.)"""

from __future__ import annotations

import pytest
from sisa.pipelines import forget

from sisa.data.synthetic import make_people
from sisa.lineage import checkpoints
from tests.helpers import cli_args, one_slice_subjects, run_cli
from tests.pipelines.helpers import serving_shards

pytestmark = pytest.mark.slow
SLICES = ("sharding.slice_size=8", "training.min_steps_per_slice=auto")


@pytest.mark.parametrize(
    "lever",
    [
        ("training.gradient_accumulation_steps=3", "training.batch_size=2"),
        ("training.lr_scheduler=linear", "training.warmup_ratio=0.25"),
        ("training.group_by_length=false",),
        ("training.gradient_checkpointing=true",),
        ("training.loss_chunk_tokens=5",),
    ],
    ids=["accumulation", "schedule-with-warmup", "no-length-grouping", "gradient-checkpointing", "chunked-loss"],
)
def test_a_trainer_lever_keeps_forget_and_replay_bit_exact(tmp_path, make_trained_store, lever):
    cfg, store = make_trained_store(make_people(14, seed=61), *SLICES, *lever)
    shard, head = sorted(serving_shards(store).items())[0]
    manifest = checkpoints.read_manifest(store, shard, head)
    assert len(manifest["step_plan_digest"]) == 16 and manifest["trained_tokens"] > 0
    assert manifest["steps"] > 0
    subject = next(iter(one_slice_subjects(store)))
    res = forget.run(cfg, "subject", [subject], quiet=True)
    assert res["request"]["status"] == "completed"
    code, out, err = run_cli("verify", "--replay", *cli_args(tmp_path / "s", *SLICES, *lever))
    assert code == 0 and "verified" in out and "DIFFER" not in out, out + err
    assert "identical tensors expected" in out


def test_mlflow_gets_each_shards_loss_and_learning_rate_at_every_step(tmp_path, make_trained_store):
    from sisa.serving.tracking import Tracker

    lever = ("training.lr_scheduler=cosine", "training.warmup_ratio=0.2")
    cfg, store = make_trained_store(make_people(10, seed=62), *SLICES, *lever, tracking=True)
    tracker = Tracker(cfg.tracking, store.fs.local_path(""))
    (run,) = tracker._runs(1)
    steps = {s: 0 for s in serving_shards(store)}
    for shard, head in serving_shards(store).items():
        for cid in checkpoints.chain(store, head):
            steps[shard] += checkpoints.read_manifest(store, shard, cid)["steps"]
    for shard, n in steps.items():
        losses = tracker.client.get_metric_history(run.info.run_id, f"shard_{shard}_step_loss")
        lrs = tracker.client.get_metric_history(run.info.run_id, f"shard_{shard}_step_lr")
        assert len(losses) == len(lrs) == n and sorted(m.step for m in lrs) == list(range(n))
        by_step = [m.value for m in sorted(lrs, key=lambda m: m.step)]
        assert by_step[0] == 0.0 and max(by_step) == pytest.approx(cfg.training.lr)  # warmup from 0, cosine after
    assert run.data.params["lr_scheduler"] == "cosine" and run.data.params["gradient_accumulation_steps"] == "1"
