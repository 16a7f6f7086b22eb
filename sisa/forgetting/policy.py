"""Decision rules: which method serves, whose approval is needed and what deadline holds, per request.

A policy (`deletion.policy`: a YAML file; empty: the shipped default, configs/policies/default.yaml)
is a list of rules tried in order; the first whose `when` matches the request decides. The last
rule has no `when`, so every request has one.

    rules:
      - name: bulk-erasure                 # 1-64 letters, digits, '-', '_', '.'; unique
        when: {kind: forget, min_records: 100}
        method: relief                     # requested | relief | fast | isolate | exact (fast for a
                                           # correction: the edit bridge, sisa/forgetting/editing.py)
        approvers: 2                       # distinct approvers, none the requester (0: none)
        relief_before_approval: true       # the (exact) relief may serve while it waits
        deadline_days: 30                  # omitted: unlearning.deadline_days
      - name: default
        method: requested

`when` matches on what is known when a request is filed: `kind` (forget, rectify), `selector`
(ids, subject, source, ingest_id), `certainty` (exact: only exact versions may serve; approximate:
it asked for `--fast`), and `min_`/`max_` of `records`, `subjects` and `shards` (inclusive). A
scalar or a list names the values allowed. `method: requested` keeps what the request asked
(its flags, else `deletion.relief`): the shipped default, with no approval and the configured
deadline, decides every request as before policies existed. `deletion.approval=always` makes
every rule ask for one approver at least.

The whole file is checked before anything is used; every problem is reported at once, naming the
rule and key. The fingerprint (a digest of the effective rules) goes into each request's
`decision` (sisa/lineage/requests_ledger.py) with the rule's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from sisa.config import SisaConfig, resolve_shipped, shipped_names
from sisa.lineage.requests_ledger import Decision, DeletionPlan, RequestKind, RequestMode
from sisa.storage.errors import ConfigError

METHODS = ("requested", *(m.value for m in RequestMode))
CHOICES = {
    "kind": tuple(k.value for k in RequestKind),
    "selector": ("ids", "subject", "source", "ingest_id"),
    "certainty": ("exact", "approximate"),
}
SIZES = ("records", "subjects", "shards")
MAX_APPROVERS = 10
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# The shipped default (configs/policies/default.yaml holds the same rule; a test keeps them equal).
DEFAULT_POLICY: dict[str, Any] = {"rules": [{"name": "default", "method": "requested", "approvers": 0}]}


@dataclass(frozen=True)
class Facts:
    """What a rule is matched on: known when the request is filed, before anything changes."""

    kind: str
    selector: str
    certainty: str
    records: int
    subjects: int
    shards: int


@dataclass(frozen=True)
class Rule:
    name: str
    when: dict[str, Any] = field(default_factory=dict)  # condition → allowed values (a tuple) or a bound (int)
    method: str = "requested"
    approvers: int = 0
    relief_before_approval: bool = False
    deadline_days: int | None = None  # None: unlearning.deadline_days

    def matches(self, facts: Facts) -> bool:
        for key, want in self.when.items():
            if key in CHOICES:
                if getattr(facts, key) not in want:
                    return False
            else:
                bound, size = key.split("_", 1)
                have = getattr(facts, size)
                if (bound == "min" and have < want) or (bound == "max" and have > want):
                    return False
        return True


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    source: str = "default"  # `default` or the file's path
    approval: str = "policy"  # deletion.approval

    def fingerprint(self) -> str:
        """Digest of what decides: the rules and `deletion.approval` (not where the file lies)."""
        body = {"rules": [dataclasses.asdict(r) for r in self.rules], "approval": self.approval}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()[:16]


def load_policy(cfg: SisaConfig) -> Policy:
    """The policy `deletion.policy` names (the shipped default when empty), with `deletion.approval`."""
    path = cfg.deletion.policy
    if not path:
        return parse_policy(DEFAULT_POLICY, "default", cfg.deletion.approval)
    p = resolve_shipped(path, "policies")
    if p is None:
        shipped = ", ".join(shipped_names("policies"))
        raise ConfigError([f"`deletion.policy`: policy file {path!r} does not exist (shipped policies: {shipped})"])
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError([f"`deletion.policy`: policy file {path!r} is not valid YAML: {e}"]) from None
    return parse_policy(data, path, cfg.deletion.approval)


def parse_policy(data: Any, source: str, approval: str = "policy") -> Policy:
    """Check the whole policy; one ConfigError lists every problem, each naming its rule and key."""
    where = f"policy {source!r}"
    if not isinstance(data, dict) or set(data) - {"rules"}:
        unknown = sorted(set(data) - {"rules"}) if isinstance(data, dict) else []
        detail = f"unknown key(s) {', '.join(map(str, unknown))}" if unknown else f"got {type(data).__name__}"
        raise ConfigError([f"{where} should be a mapping with one key, `rules` (a list of rules); {detail}"])
    raw = data.get("rules")
    if not isinstance(raw, list) or not raw:
        raise ConfigError([f"{where}: `rules` should be a non-empty list of rules, got {raw!r}"])
    problems: list[str] = []
    rules = [_parse_rule(i, r, problems) for i, r in enumerate(raw)]
    names = [r.name for r in rules if r is not None]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"rule name `{name}` is used more than once; each rule needs its own name")
    catch_all = next((i for i, r in enumerate(rules) if r is not None and not r.when), None)
    if catch_all is None:
        problems.append("the last rule should have no `when`, so that every request has a rule")
    elif catch_all < len(rules) - 1:
        later = ", ".join(f"`{r.name}`" for r in rules[catch_all + 1 :] if r is not None)
        first = rules[catch_all].name
        problems.append(f"rule(s) {later} come after `{first}`, which matches every request: they never apply")
    if problems:
        raise ConfigError([f"{where}: {p}" for p in problems])
    return Policy(tuple(r for r in rules if r is not None), source, approval)


_RULE_KEYS = ("name", "when", "method", "approvers", "relief_before_approval", "deadline_days")


def _parse_rule(i: int, raw: Any, problems: list[str]) -> Rule | None:
    if not isinstance(raw, dict):
        problems.append(f"rules[{i}] should be a mapping (name, when, method, ...), got {raw!r}")
        return None
    name = raw.get("name")
    at = f"rules[{i}]" + (f" (`{name}`)" if isinstance(name, str) else "")
    bad: list[str] = []
    for key in sorted(set(raw) - set(_RULE_KEYS), key=str):
        bad.append(f"{at}: unknown key `{key}` (known: {', '.join(_RULE_KEYS)})")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        bad.append(f"{at}.name should be 1-64 letters, digits, '-', '_' or '.', got {name!r}")
    method = raw.get("method", "requested")
    if method not in METHODS:
        bad.append(f"{at}.method should be one of {', '.join(METHODS)}, got {method!r}")
    approvers = raw.get("approvers", 0)
    if not _is_int(approvers) or not 0 <= approvers <= MAX_APPROVERS:
        bad.append(f"{at}.approvers should be an integer from 0 to {MAX_APPROVERS}, got {approvers!r}")
    relief = raw.get("relief_before_approval", False)
    if not isinstance(relief, bool):
        bad.append(f"{at}.relief_before_approval should be true or false, got {relief!r}")
    days = raw.get("deadline_days")
    if days is not None and (not _is_int(days) or days < 1):
        bad.append(f"{at}.deadline_days should be an integer >= 1 (or omitted: unlearning.deadline_days), got {days!r}")
    when = _parse_when(at, raw.get("when") or {}, bad)
    problems.extend(bad)
    if bad:
        return Rule(name if isinstance(name, str) else f"rules[{i}]", when)  # checked for the rules after it
    return Rule(name, when, method, approvers, relief, days)


def _parse_when(at: str, raw: Any, bad: list[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        bad.append(f"{at}.when should be a mapping of conditions, got {raw!r}")
        return {"invalid": True}
    sizes = [f"{b}_{s}" for s in SIZES for b in ("min", "max")]
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in CHOICES:
            values = value if isinstance(value, list) else [value]
            wrong = [v for v in values if v not in CHOICES[key]]
            if wrong or not values:
                bad.append(f"{at}.when.{key} should be one or a list of {', '.join(CHOICES[key])}, got {value!r}")
            out[key] = tuple(values)
        elif key in sizes:
            if not _is_int(value) or value < 0:
                bad.append(f"{at}.when.{key} should be an integer >= 0, got {value!r}")
            out[key] = value
        else:
            bad.append(f"{at}.when: unknown condition `{key}` (known: {', '.join([*CHOICES, *sizes])})")
    for size in SIZES:
        lo, hi = out.get(f"min_{size}"), out.get(f"max_{size}")
        if _is_int(lo) and _is_int(hi) and lo > hi:
            bad.append(f"{at}.when: min_{size} ({lo}) is above max_{size} ({hi}); no request can match")
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def facts_of(kind: RequestKind, selector: str, plan: DeletionPlan, subjects: int, asked: RequestMode) -> Facts:
    certainty = "approximate" if asked == RequestMode.FAST else "exact"
    return Facts(kind.value, selector, certainty, plan.records, subjects, len(plan.shards))


def decide(policy: Policy, cfg: SisaConfig, facts: Facts, asked: RequestMode) -> Decision:
    """The first rule that matches: the method (`requested`: `asked`), the approvers (at least one
    with `deletion.approval=always`) and the deadline."""
    rule = next(r for r in policy.rules if r.matches(facts))  # the last rule matches every request
    approvers = max(rule.approvers, 1) if policy.approval == "always" else rule.approvers
    return Decision(
        rule=rule.name,
        policy_fingerprint=policy.fingerprint(),
        policy=policy.source + (" with deletion.approval=always" if policy.approval == "always" else ""),
        method=asked.value if rule.method == "requested" else rule.method,
        approvers=approvers,
        relief_before_approval=rule.relief_before_approval,
        deadline_days=rule.deadline_days or cfg.unlearning.deadline_days,
        facts=dataclasses.asdict(facts),
    )


def describe(d: Decision) -> str:
    """One line for a dry run, a filed request and the logs."""
    approval = f"approval by {d.approvers} approver(s)" if d.approvers else "no approval"
    return (
        f"rule `{d.rule}` (policy {d.policy}, fingerprint {d.policy_fingerprint}): method {d.method}, {approval}, "
        f"deadline {d.deadline_days} day(s)"
    )
