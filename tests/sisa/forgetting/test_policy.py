"""Decision rules (sisa/forgetting/policy.py): the shipped policies load, every problem of a bad
one is named at once with its rule and key, the first matching rule decides, and
`deletion.approval=always` asks every request for an approver."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sisa.storage.errors import ConfigError

from sisa.config import build_config
from sisa.forgetting import policy
from sisa.lineage.requests_ledger import RequestMode

REPO = Path(__file__).resolve().parents[3]
POLICIES = sorted((REPO / "configs" / "policies").glob("*.yaml"))


def facts(**kw) -> policy.Facts:
    base = {"kind": "forget", "selector": "subject", "certainty": "exact", "records": 2, "subjects": 1, "shards": 1}
    return policy.Facts(**(base | kw))


def test_the_shipped_default_file_is_the_built_in_default():
    from_file = policy.parse_policy(yaml.safe_load((REPO / "configs/policies/default.yaml").read_text()), "x")
    built_in = policy.load_policy(build_config())
    assert from_file.rules == built_in.rules and from_file.fingerprint() == built_in.fingerprint()
    assert built_in.source == "default"


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_every_shipped_policy_loads(path):
    cfg = build_config(overrides=[f"deletion.policy={path}"])
    pol = policy.load_policy(cfg)
    assert pol.rules and not pol.rules[-1].when and pol.source == str(path)


def test_the_default_decides_as_before_policies_existed():
    cfg = build_config(overrides=["unlearning.deadline_days=12"])
    pol = policy.load_policy(cfg)
    for asked in RequestMode:
        for kind in ("forget", "rectify"):
            d = policy.decide(pol, cfg, facts(kind=kind, records=10_000, subjects=500, shards=4), asked)
            assert (d.rule, d.method, d.approvers, d.deadline_days) == ("default", asked.value, 0, 12)
            assert not d.relief_before_approval and d.policy_fingerprint == pol.fingerprint()


def test_approval_always_asks_every_rule_for_an_approver_and_changes_the_fingerprint():
    plain = policy.load_policy(build_config())
    cfg = build_config(overrides=["deletion.approval=always"])
    strict = policy.load_policy(cfg)
    assert strict.fingerprint() != plain.fingerprint()
    d = policy.decide(strict, cfg, facts(), RequestMode.RELIEF)
    assert d.approvers == 1 and d.rule == "default" and "deletion.approval=always" in d.policy
    two = policy.parse_policy({"rules": [{"name": "all", "approvers": 2}]}, "p", "always")
    assert policy.decide(two, cfg, facts(), RequestMode.EXACT).approvers == 2  # at least one, not exactly one
    with pytest.raises(ConfigError, match="deletion.approval"):
        build_config(overrides=["deletion.approval=sometimes"])


def test_the_first_matching_rule_decides():
    cfg = build_config(overrides=["unlearning.deadline_days=30"])
    pol = policy.parse_policy(yaml.safe_load((REPO / "configs/policies/four-eyes.yaml").read_text()), "four-eyes")
    cases = [
        (facts(selector="source", subjects=5), RequestMode.RELIEF, ("bulk-rollback", "relief", 2, True, 30)),
        (facts(subjects=2, records=4), RequestMode.FAST, ("many-subjects", "relief", 1, False, 30)),
        (facts(kind="rectify", selector="ids"), RequestMode.EXACT, ("correction", "exact", 1, False, 30)),
        (facts(certainty="approximate"), RequestMode.FAST, ("approximate-bridge", "fast", 1, False, 30)),
        (facts(), RequestMode.ISOLATE, ("single-subject", "isolate", 0, False, 30)),
    ]
    for f, asked, want in cases:
        d = policy.decide(pol, cfg, f, asked)
        assert (d.rule, d.method, d.approvers, d.relief_before_approval, d.deadline_days) == want, f
        assert d.facts == {**f.__dict__}


def test_size_bounds_are_inclusive_and_a_rule_sets_its_deadline():
    cfg = build_config()
    pol = policy.parse_policy(
        {
            "rules": [
                {"name": "small", "when": {"max_records": 3, "min_shards": 1}, "deadline_days": 5},
                {"name": "rest", "method": "exact", "approvers": 1},
            ]
        },
        "p",
    )
    assert policy.decide(pol, cfg, facts(records=3), RequestMode.RELIEF).deadline_days == 5
    d = policy.decide(pol, cfg, facts(records=4), RequestMode.RELIEF)
    assert (d.rule, d.method, d.approvers, d.deadline_days) == ("rest", "exact", 1, cfg.unlearning.deadline_days)


def test_a_bad_policy_names_every_problem_with_its_rule_and_key():
    bad = {
        "rules": [
            {"name": "bulk", "when": {"min_records": "many", "kind": "erase"}, "aprovers": 2},
            {"name": "bulk", "method": "fastest", "approvers": 11, "deadline_days": 0},
            {"name": "x y", "when": {"min_shards": 3, "max_shards": 2, "colour": "red"}},
            {"name": "tail", "when": {"kind": "forget"}, "relief_before_approval": "yes"},
        ]
    }
    with pytest.raises(ConfigError) as e:
        policy.parse_policy(bad, "p.yaml")
    problems = "\n".join(e.value.problems)
    for needle in (
        "rules[0] (`bulk`).when.min_records should be an integer >= 0, got 'many'",
        "rules[0] (`bulk`).when.kind should be one or a list of forget, rectify, got 'erase'",
        "rules[0] (`bulk`): unknown key `aprovers`",
        "rules[1] (`bulk`).method should be one of requested, exact, relief, fast, isolate, got 'fastest'",
        "rules[1] (`bulk`).approvers should be an integer from 0 to 10, got 11",
        "rules[1] (`bulk`).deadline_days should be an integer >= 1",
        "rules[2] (`x y`).name should be 1-64 letters",
        "rules[2] (`x y`).when: min_shards (3) is above max_shards (2)",
        "rules[2] (`x y`).when: unknown condition `colour`",
        "rules[3] (`tail`).relief_before_approval should be true or false, got 'yes'",
        "rule name `bulk` is used more than once",
        "rule(s) `x y`, `tail` come after `bulk`, which matches every request",
    ):
        assert needle in problems, needle
    assert all(p.startswith("policy 'p.yaml': ") for p in e.value.problems)


@pytest.mark.parametrize(
    "data, needle",
    [
        (None, "should be a mapping with one key, `rules`"),
        ({"rules": []}, "`rules` should be a non-empty list"),
        ({"rules": [{"name": "a"}], "version": 2}, "unknown key(s) version"),
        ({"rules": ["a"]}, "rules[0] should be a mapping"),
        ({"rules": [{"name": "a", "when": {"kind": "forget"}}]}, "the last rule should have no `when`"),
        ({"rules": [{"name": "a", "when": ["kind"]}]}, "rules[0] (`a`).when should be a mapping"),
    ],
)
def test_the_shape_of_a_policy_is_checked(data, needle):
    with pytest.raises(ConfigError) as e:
        policy.parse_policy(data, "p")
    assert needle in e.value.message


def test_a_policy_file_that_is_missing_or_not_yaml_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        policy.load_policy(build_config(overrides=[f"deletion.policy={tmp_path / 'nope.yaml'}"]))
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        policy.load_policy(build_config(overrides=[f"deletion.policy={broken}"]))


def test_the_fingerprint_is_of_the_rules_not_the_file():
    rules = {"rules": [{"name": "a", "approvers": 1}]}
    assert policy.parse_policy(rules, "one").fingerprint() == policy.parse_policy(rules, "two").fingerprint()
    other = {"rules": [{"name": "a", "approvers": 2}]}
    assert policy.parse_policy(rules, "one").fingerprint() != policy.parse_policy(other, "one").fingerprint()
