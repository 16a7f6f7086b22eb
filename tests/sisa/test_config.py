"""Config: shipped YAML loads, dotted overrides, every problem in one ConfigError, stable fingerprints."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sisa.pipelines.cli import main
from sisa.storage.errors import ConfigError

from sisa import config as config_module
from sisa.config import SisaConfig, TrainingConfig, build_config, describe_config, load_config, with_later_keys

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TINY = REPO / "configs" / "tiny.yaml"


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"tiny.yaml", "base.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, SisaConfig)
    # Every key the file sets is taken (nothing silently dropped).
    data = yaml.safe_load(path.read_text())
    effective = cfg.to_dict()
    for section, values in data.items():
        for key, value in (values or {}).items():
            assert effective[section][key] == value, f"{path.name}: {section}.{key}"


def test_base_config_documents_every_key():
    data = yaml.safe_load((REPO / "configs" / "base.yaml").read_text())
    defaults = SisaConfig().to_dict()
    assert {s: set(v) for s, v in data.items()} == {s: set(v) for s, v in defaults.items()}
    # base.yaml holds the defaults: loading it equals loading nothing.
    assert load_config(REPO / "configs" / "base.yaml").to_dict() == defaults


def test_overrides_apply_and_are_typed():
    cfg = load_config(
        TINY,
        [
            "store.uri=/tmp/s",
            "sharding.num_shards=8",
            "training.lr=1e-4",
            "lora.target_modules=q_proj,v_proj,o_proj",
            "tracking.enabled=false",
        ],
    )
    assert cfg.store.uri == "/tmp/s"
    assert cfg.sharding.num_shards == 8
    assert cfg.training.lr == pytest.approx(1e-4) and isinstance(cfg.training.lr, float)
    assert cfg.lora.target_modules == ["q_proj", "v_proj", "o_proj"]
    assert cfg.tracking.enabled is False
    # Untouched values come from the file, then the defaults.
    assert cfg.sharding.slice_size == 16
    assert cfg.training.weight_decay == 0.0


def test_override_wins_over_file_and_last_override_wins():
    cfg = load_config(TINY, ["sharding.slice_size=3", "sharding.slice_size=5"])
    assert cfg.sharding.slice_size == 5


def test_config_is_frozen():
    cfg = load_config(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sharding.num_shards = 9  # type: ignore[misc]


def test_every_problem_is_reported_in_one_error():
    data = {
        "store": {"uri": "/tmp/s", "colour": "blue"},  # unknown key
        "sharding": {"num_shards": 0, "slice_size": "big", "slice_mode": "sideways"},  # range, type, choice
        "training": {"lr": True},  # a bool is not a number
        "lora": {"target_modules": [1, 2]},
        "widgets": {"a": 1},  # unknown section
    }
    overrides = ["tracking.enabled=maybe", "nosection.x=1", "model", "store.a.b=1"]
    with pytest.raises(ConfigError) as err:
        build_config(data, overrides)
    problems = err.value.problems
    expected = [
        "store.colour",
        "sharding.num_shards",
        "sharding.slice_size",
        "sharding.slice_mode",
        "training.lr",
        "lora.target_modules",
        "widgets",
        "tracking.enabled",
        "nosection",
        "`model`",
        "store.a.b",
    ]
    assert len(problems) == len(expected), problems
    for needle in expected:
        assert sum(needle in p for p in problems) >= 1, (needle, problems)
    msg = str(err.value)
    assert f"{len(expected)} problem(s)" in msg
    assert "`sharding.num_shards` should be >= 1, got 0" in msg
    assert "`sharding.slice_mode` should be one of cumulative, incremental, got 'sideways'" in msg


def test_config_file_problems():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/no/such.yaml")


def test_bad_yaml_is_a_config_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("store: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(p)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    code = main(["status", "--config", str(TINY), f"store.uri={tmp_path}/s", "sharding.num_shards=-1", "store.nope=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 problem(s)" in err and "sharding.num_shards" in err and "store.nope" in err


FINGERPRINT = """
import json, sys
from sisa.config import load_config
cfg = load_config(sys.argv[1], sys.argv[2:])
print(json.dumps([cfg.fingerprint(), cfg.training_fingerprint()]))
"""


def test_fingerprint_is_stable_across_processes():
    overrides = ["store.uri=/tmp/s", "sharding.num_shards=8"]
    cfg = load_config(TINY, overrides)
    out = subprocess.run(
        [sys.executable, "-c", FINGERPRINT, str(TINY), *overrides],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert json.loads(out.stdout) == [cfg.fingerprint(), cfg.training_fingerprint()]


def test_fingerprint_is_stable_within_a_process_and_ignores_key_order():
    a = build_config({"training": {"lr": 0.01, "epochs": 2}, "store": {"seed": 3}})
    b = build_config({"store": {"seed": 3}, "training": {"epochs": 2, "lr": 0.01}})
    assert a.fingerprint() == b.fingerprint()
    assert a.training_fingerprint() == b.training_fingerprint()
    # An int given where a float is expected is the same value.
    assert build_config({"training": {"lr": 1}}).fingerprint() == build_config({"training": {"lr": 1.0}}).fingerprint()


@pytest.mark.parametrize(
    "override",
    [
        "training.lr=0.0049",
        "training.epochs=2",
        "lora.r=8",
        "sharding.slice_size=17",
        "store.seed=1",
        "model.name=smollm2",
        "sharding.slice_mode=incremental",
    ],
)
def test_training_values_change_both_fingerprints(override):
    base = load_config(TINY)
    changed = load_config(TINY, [override])
    assert changed.fingerprint() != base.fingerprint()
    assert changed.training_fingerprint() != base.training_fingerprint()


@pytest.mark.parametrize(
    "override", ["store.uri=/elsewhere", "tracking.experiment=x", "scheduler.backend=serial", "store.lock_timeout_s=1"]
)
def test_operational_values_leave_the_training_fingerprint(override):
    base = load_config(TINY)
    changed = load_config(TINY, [override])
    assert changed.fingerprint() != base.fingerprint()
    assert changed.training_fingerprint() == base.training_fingerprint()


def test_describe_lists_every_key_with_help():
    text = describe_config()
    for section, values in SisaConfig().to_dict().items():
        assert f"{section}:" in text
        for key in values:
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{key} ="))
            assert "#" in line and line.split("#", 1)[1].strip(), f"{section}.{key} has no help"


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 reads `1e-4` as a string; a learning rate written that way must still load.
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  lr: 1e-4\nunlearning:\n  lr: 5E-5\n")
    cfg = load_config(p)
    assert cfg.training.lr == pytest.approx(1e-4)
    assert cfg.unlearning.lr == pytest.approx(5e-5)
    with pytest.raises(ConfigError, match="`training.lr` should be a number, got 'fast'"):
        load_config(p, ["training.lr=fast"])


def test_serving_and_min_steps_fields_are_validated_together():
    cfg = load_config(
        TINY,
        [
            "serving.aggregation=uniform",
            "serving.prior=records",
            "serving.top_shards=1",
            "training.min_steps_per_slice=5",
        ],
    )
    assert (cfg.serving.aggregation, cfg.serving.prior, cfg.serving.top_shards) == ("uniform", "records", 1)
    assert cfg.training.min_steps_per_slice == 5
    defaults = SisaConfig()
    assert (defaults.serving.aggregation, defaults.serving.prior, defaults.serving.top_shards) == (
        "posterior",
        "uniform",
        2,
    )
    assert defaults.training.min_steps_per_slice == "auto"
    assert load_config(TINY, ["training.min_steps_per_slice=auto"]).training.min_steps_per_slice == "auto"
    with pytest.raises(ConfigError) as err:
        load_config(
            TINY,
            [
                "serving.aggregation=mean",
                "serving.prior=size",
                "serving.top_shards=-1",
                "training.min_steps_per_slice=-2",
                "serving.shards=2",
            ],
        )
    msg = str(err.value)
    assert "5 problem(s)" in msg
    assert "`serving.aggregation` should be one of posterior, uniform, got 'mean'" in msg
    assert "`serving.prior` should be one of uniform, records, got 'size'" in msg
    assert "`serving.top_shards` should be >= 0, got -1" in msg
    assert "`training.min_steps_per_slice` should be >= 0, got -2" in msg
    assert "unknown key `serving.shards`" in msg


@pytest.mark.parametrize("override", ["serving.aggregation=uniform", "serving.prior=records", "serving.top_shards=0"])
def test_serving_values_leave_the_training_fingerprint(override):
    base = load_config(TINY)
    changed = load_config(TINY, [override])
    assert changed.fingerprint() != base.fingerprint()
    assert changed.training_fingerprint() == base.training_fingerprint()


def test_min_steps_changes_the_training_fingerprint_only_when_on(monkeypatch):
    base = load_config(TINY)  # tiny.yaml: 0
    # Off (0) leaves the digest as it was before the key existed, so such stores continue. The
    # digest is pinned: a change here changes every store's checkpoint ids (and chains trained by
    # another engine are refused by TRAINER_VERSION, which is in it: 1 gave d78acea1abb4a92e,
    # 2 dfaa57f0b9f77d53) ...
    off = SisaConfig(training=TrainingConfig(min_steps_per_slice=0, max_length=64, prompt_loss_weight=0.0))
    assert off.training_fingerprint() == "53fa9f98cff7a3ae"
    monkeypatch.setattr(config_module, "TRAINER_VERSION", 1)
    assert off.training_fingerprint() != "53fa9f98cff7a3ae"
    monkeypatch.undo()
    assert load_config(TINY, ["training.min_steps_per_slice=0"]).training_fingerprint() == base.training_fingerprint()
    # ... and any other value refuses to continue their checkpoints.
    on = load_config(TINY, ["training.min_steps_per_slice=4"])
    assert on.training_fingerprint() != base.training_fingerprint()
    assert on.training_fingerprint() != load_config(TINY, ["training.min_steps_per_slice=5"]).training_fingerprint()
    # The default, auto, is on: stores trained with the key off (the old default) are not continued
    # under it, nor under another version of its rule (its constant is in the digest).
    assert SisaConfig().training.min_steps_per_slice == "auto"
    assert SisaConfig().training_fingerprint() != off.training_fingerprint()
    auto = load_config(TINY, ["training.min_steps_per_slice=auto"])
    assert auto.training_fingerprint() not in {base.training_fingerprint(), on.training_fingerprint()}
    digest = auto.training_fingerprint()
    monkeypatch.setattr(config_module, "AUTO_STEPS_PER_EPOCH", 4)
    assert load_config(TINY, ["training.min_steps_per_slice=auto"]).training_fingerprint() != digest


def test_min_steps_per_slice_takes_auto_or_a_number_and_says_so():
    assert load_config(TINY, ["training.min_steps_per_slice=12"]).training.min_steps_per_slice == 12
    for bad, problem in [
        ("fast", "should be auto or an integer, got 'fast'"),
        ("2.5", "should be an integer, got 2.5"),
        ("-1", "should be >= 0, got -1"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(TINY, [f"training.min_steps_per_slice={bad}", "training.epochs=0"])
        assert "2 problem(s)" in str(err.value)  # reported beside the other problems
        assert f"`training.min_steps_per_slice` {problem}" in str(err.value)


def test_loss_on_keeps_old_fingerprints_at_its_default():
    base = load_config(TINY)
    assert base.training.loss_on == "completion"
    assert load_config(TINY, ["training.loss_on=completion"]).training_fingerprint() == base.training_fingerprint()
    assert load_config(TINY, ["training.loss_on=all"]).training_fingerprint() != base.training_fingerprint()
    with pytest.raises(ConfigError, match="loss_on"):
        load_config(TINY, ["training.loss_on=prompt"])


def test_prompt_loss_weight_keeps_old_fingerprints_at_0_and_is_ignored_under_all():
    """Stores trained before the key were completion-only: 0 leaves their fingerprint (and a
    recorded section without the key reads as 0); the default, 0.1, is another config; under
    loss_on=all every token weighs 1, so the weight changes nothing there."""
    assert SisaConfig().training.prompt_loss_weight == 0.1
    off = load_config(TINY, ["training.prompt_loss_weight=0"])
    before = off.training_sections()
    del before["training"]["prompt_loss_weight"]  # a manifest written before the key existed
    assert with_later_keys(before["training"])["prompt_loss_weight"] == 0.0
    assert load_config(TINY).training_fingerprint() != off.training_fingerprint()
    assert load_config(TINY, ["training.prompt_loss_weight=0.5"]).training_fingerprint() != (
        load_config(TINY).training_fingerprint()
    )
    alls = {
        load_config(TINY, ["training.loss_on=all", f"training.prompt_loss_weight={w}"]).training_fingerprint()
        for w in (0, 0.1, 1)
    }
    assert len(alls) == 1
    for bad, problem in (("-0.1", "should be >= 0.0"), ("2", "should be <= 1.0"), ("some", "should be a number")):
        with pytest.raises(ConfigError, match=f"`training.prompt_loss_weight` {problem}"):
            load_config(TINY, [f"training.prompt_loss_weight={bad}"])


def test_truncation_and_the_cut_rule_are_in_the_fingerprint(monkeypatch):
    base = load_config(TINY)
    assert SisaConfig().training.truncation == "cut"
    assert load_config(TINY, ["training.truncation=cut"]).training_fingerprint() == base.training_fingerprint()
    assert load_config(TINY, ["training.truncation=refuse"]).training_fingerprint() != base.training_fingerprint()
    # The rule that cuts, under its name: another rule is another fingerprint.
    digest = base.training_fingerprint()
    monkeypatch.setattr(config_module, "CUT_RULE", "another-rule")
    assert load_config(TINY).training_fingerprint() != digest


def test_max_length_defaults_to_trls_1024_and_says_so():
    assert SisaConfig().training.max_length == 1024
    assert "max_length = 1024  # Tokens per record at most (TRL's default)" in describe_config()
    with pytest.raises(ConfigError, match="`training.truncation` should be one of cut, refuse, got 'drop'"):
        load_config(TINY, ["training.truncation=drop"])
