"""A deletion request's life: its status, and the typed ledger entry that carries it.

    received ──► data_deleted ──► retraining ──► completed      (`sisa forget`, `sisa rectify`)
    received ──► queued ──► data_deleted ──► retraining ──► completed   (`--queue`, then a batch)
    received ──► awaiting_approval ──► received ──► queued ──► ...       (its rule asks for approval)
                 awaiting_approval ──► rejected                           (an approver said no: final)

A rectification (kind `rectify`) is a request on the same ledger and goes the same way; its
`data_deleted` means the records' text was replaced. Evidence and the relief version are measured
and committed while `received`; a queued request has its records marked in the index
(`forgetting`, a rectification's `rectifying`: no training reads them) and its relief serving.
`sisa/forgetting/runner.py` moves a request through these statuses and is the only writer of
its entry; `unfinished_requests` here is what every writer of the store waits for.

A request whose rule (`sisa/forgetting/policy.py`, recorded as its `decision`) asks for approval
waits in `awaiting_approval`: in the ledger, nothing served (unless its rule lets the relief
serve) or destroyed, blocking nobody, until enough approvers other than its requester approve
(`approvals`; it is then carried out by a batch, from the version serving then) or one rejects
it (`rejection`, with the reason; nothing in the store changes).

`storage/ledgers.py` reads and writes plain JSON; this module gives the entry its types. An entry
carries `schema_version`; keys this version does not know are kept in `extra` and written back
unchanged, so an older sisa never drops what a newer one recorded. A status this version does not
know is refused (`RequestStatus.parse`), never guessed: a request's status decides what may run.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sisa.lineage.entries import entry_to_dict, split_known
from sisa.storage import ledgers
from sisa.storage.errors import RefusedError
from sisa.storage.store import Store, now_iso

SCHEMA_VERSION = 1


# The requester's attestation of how the data subject's identity was verified: free text, capped.
IDENTITY_VERIFICATION_MAX = 500


@dataclass
class Decision:
    """The policy rule that decided a request (sisa/forgetting/policy.py): what it chose, and the
    fingerprint of the policy it came from, so an auditor can tell which criteria applied."""

    rule: str  # the rule's name
    policy_fingerprint: str  # digest of the effective policy (its rules and `deletion.approval`)
    policy: str  # where the policy came from: `default` (the shipped one) or the file's path
    method: str  # the RequestMode that serves until the exact version
    approvers: int  # distinct approvers, none of them the requester, before it is carried out
    relief_before_approval: bool  # the relief may serve while it waits
    deadline_days: int
    facts: dict[str, Any] = field(default_factory=dict)  # what the rule was matched on: kind, counts, certainty
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer sisa wrote

    def to_dict(self) -> dict[str, Any]:
        return entry_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        known, extra = split_known(cls, d)
        known["facts"] = dict(known.get("facts") or {})
        return cls(**known, extra=extra)


@dataclass
class ShardPlan:
    shard_id: int
    earliest_slice: int
    last_slice: int
    records: int  # records deleted from this shard
    slices_hit: list[int]


@dataclass
class DeletionPlan:
    selector_kind: str
    records: int
    shards: list[ShardPlan] = field(default_factory=list)
    unaffected_shards: list[int] = field(default_factory=list)
    retrain_cost: float = 0.0  # record-passes the retrain will do
    full_cost: float = 0.0  # record-passes of a full retrain of every shard
    missing: int = 0
    already_deleted: int = 0

    @property
    def cost_fraction(self) -> float:
        return self.retrain_cost / self.full_cost if self.full_cost else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cost_fraction"] = self.cost_fraction
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DeletionPlan:
        """Read back a plan from a ledger entry (derived keys such as cost_fraction are recomputed)."""
        shards = [
            ShardPlan(**{k: s[k] for k in ("shard_id", "earliest_slice", "last_slice", "records", "slices_hit")})
            for s in d.get("shards", [])
        ]
        plan = cls(d["selector_kind"], d["records"], shards)
        for name in ("unaffected_shards", "retrain_cost", "full_cost", "missing", "already_deleted"):
            if name in d:
                setattr(plan, name, d[name])
        return plan

    @property
    def shard_ids(self) -> list[int]:
        return [s.shard_id for s in self.shards]


class RequestStatus(enum.StrEnum):
    RECEIVED = "received"  # in the ledger; nothing destroyed yet (evidence, relief happen here)
    QUEUED = "queued"  # recorded and relieved; waits for a batch to delete and retrain
    DATA_DELETED = "data_deleted"  # records gone from the slice files and the index
    RETRAINING = "retraining"  # affected shards retrain, the exact version commits, the purge runs
    COMPLETED = "completed"  # exact version serving, tainted checkpoints purged, certificate written
    FAILED = "failed"  # given up by an operator; never set by sisa itself
    AWAITING_APPROVAL = "awaiting_approval"  # in the ledger, validated; waits for approvers (nothing destroyed)
    REJECTED = "rejected"  # an approver refused it, with a reason: final, nothing in the store changed

    @property
    def is_terminal(self) -> bool:
        return self in (RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.REJECTED)

    @property
    def is_open(self) -> bool:
        """Still owes work: its records may be in the data or in a serving checkpoint."""
        return not self.is_terminal

    @classmethod
    def parse(cls, value: str) -> RequestStatus:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown deletion request status {value!r}; known: {', '.join(s.value for s in cls)}"
            ) from None


class RequestKind(enum.StrEnum):
    """What the request does to its records: the same phases, one ledger."""

    FORGET = "forget"  # the records leave the data; `id_hashes` are their keyed id hashes
    RECTIFY = "rectify"  # the records keep id, shard and slice, their text is replaced; `id_hashes`
    # are the keyed (id, old content) hashes that lineage records, `record_hashes` the id hashes


class RequestMode(enum.StrEnum):
    """What serves between the request and its exact version."""

    EXACT = "exact"  # no bridge: the exact version is the first to serve
    RELIEF = "relief"  # exact at once: affected shards at their last clean checkpoint
    FAST = "fast"  # an approximate (NPO) version serves until the exact one lands
    ISOLATE = "isolate"  # the unaffected shards serve alone until the exact one lands


class VersionKind(enum.StrEnum):
    """What a version committed for a request is: a bridge (one of the first three), or the exact one."""

    RELIEF = "relief"
    APPROXIMATE = "approximate"
    ISOLATE = "isolate"
    EXACT = "exact"


BRIDGES = (VersionKind.RELIEF, VersionKind.APPROXIMATE, VersionKind.ISOLATE)
_KINDS = frozenset(k.value for k in VersionKind)


class _Unset(enum.Enum):
    UNSET = "unset"  # an enum member: one object through copies and pickles


UNSET: Any = _Unset.UNSET  # the phase that commits it has not run; None: it ran and committed none


@dataclass(frozen=True, eq=False)
class RequestVersions(Mapping[str, int | None]):
    """The versions a request committed, by kind: what a resumed run reads to skip the work done.
    A kind is UNSET until its phase ran; `exact` None means the phase ran and nothing needed a
    version (nothing served when the request came). In the ledger it is the JSON object it always
    was ({"relief": 2, "exact": 3}: the kinds recorded, in this order, keys a newer sisa wrote kept
    as they are), and it reads like that object: `versions["exact"]`, `"relief" in versions`."""

    relief: int | None = UNSET
    approximate: int | None = UNSET
    isolate: int | None = UNSET
    exact: int | None = UNSET
    extra: tuple[tuple[str, Any], ...] = ()  # keys a newer sisa wrote

    def __getitem__(self, key: str) -> int | None:
        if key in _KINDS and getattr(self, key) is not UNSET:
            return getattr(self, key)
        for k, v in self.extra:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield from (k.value for k in VersionKind if getattr(self, k.value) is not UNSET)
        yield from (k for k, _ in self.extra)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"RequestVersions({self.to_dict()!r})"

    @property
    def bridge(self) -> VersionKind | None:
        """The bridge this request committed (relief, approximate or isolate), if any."""
        return next((k for k in BRIDGES if getattr(self, k.value) is not UNSET), None)

    def has(self, kind: VersionKind) -> bool:
        return getattr(self, kind.value) is not UNSET

    def recorded(self, kind: VersionKind, model_version: int | None) -> RequestVersions:
        """These versions with `kind` committed as `model_version`."""
        return replace(self, **{kind.value: model_version})

    def to_dict(self) -> dict[str, int | None]:
        return dict(self.items())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RequestVersions:
        d = dict(d or {})
        known = {k.value: d.pop(k.value) for k in VersionKind if k.value in d}
        return cls(**known, extra=tuple(d.items()))


@dataclass
class DeletionRequest:
    """One deletion request as the ledger holds it: keyed hashes and counts, never ids or text."""

    request_id: str
    selector: dict[str, Any]  # kind, value_hash, value_hashes (keyed)
    id_hashes: list[str]  # the lineage hashes this request forgets (see RequestKind)
    records: int
    received_at: str
    deadline: str
    status: RequestStatus = RequestStatus.RECEIVED
    mode: RequestMode = RequestMode.EXACT
    kind: RequestKind = RequestKind.FORGET
    record_hashes: list[str] = field(default_factory=list)  # rectify: keyed hashes of the record ids
    rectified: list[dict[str, str]] = field(default_factory=list)  # rectify: {"old", "new"} content hashes (keyed)
    queued: bool = False  # filed with --queue: a batch (`sisa process`) deletes and retrains
    batch_id: str | None = None  # the batch that carries it out
    idempotency_key_hash: str | None = None  # keyed hash of the client's idempotency key (HTTP API)
    subject_hashes: list[str] = field(default_factory=list)
    missing_skipped: int = 0
    history: list[dict[str, str]] = field(default_factory=list)
    plan: DeletionPlan | None = None
    version_before: int | None = None
    checkpoints_before: list[dict[str, Any]] = field(default_factory=list)
    versions: RequestVersions = field(default_factory=RequestVersions)  # what it committed: the resume state
    timings: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    removed: int | None = None
    retrained: list[dict[str, Any]] = field(default_factory=list)
    purge: dict[str, Any] | None = None
    certificate: dict[str, Any] | None = None
    completed_at: str | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    # Governance: which rule decided it, who filed it and how they verified the subject's identity
    # (an attestation: how, never who or what; not part of the certificate's request hash), and
    # the approvers' decisions. Absent (None, []) in requests filed before policies existed.
    decision: Decision | None = None
    requested_by: str | None = None  # the requester's token name (HTTP) or `--as` / login name (CLI)
    identity_verification: str | None = None
    approvals: list[dict[str, str]] = field(default_factory=list)  # {"by", "at"}, one per distinct approver
    rejection: dict[str, str] | None = None  # {"by", "at", "reason"}
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer sisa wrote

    @property
    def target_hashes(self) -> list[str]:
        """Keyed hashes of the ids of the records the request acts on (to find them again)."""
        return self.record_hashes if self.kind == RequestKind.RECTIFY else self.id_hashes

    @property
    def batch_owned(self) -> bool:
        """Open work a batch owes: queued, or in a batch a crash interrupted (not one cut short
        before it was queued, nor one awaiting approval)."""
        return self.queued and self.status not in (RequestStatus.RECEIVED, RequestStatus.AWAITING_APPROVAL)

    @property
    def approvers_needed(self) -> int:
        return self.decision.approvers if self.decision else 0

    @property
    def needs_approval(self) -> bool:
        """Its rule asks for more distinct approvers than have approved (and nobody rejected it)."""
        return self.rejection is None and len({a["by"] for a in self.approvals}) < self.approvers_needed

    def is_overdue(self, now: datetime | None = None) -> bool:
        """Past its deadline and not completed (a failed request was not honoured either; a
        rejected one was decided, and owes nothing)."""
        decided = self.status in (RequestStatus.COMPLETED, RequestStatus.REJECTED)
        return not decided and datetime.fromisoformat(self.deadline) < (now or datetime.now(UTC))

    def record_version(self, kind: VersionKind, model_version: int | None) -> None:
        """Record the version a phase committed for it (the caller writes the entry to the ledger)."""
        self.versions = self.versions.recorded(kind, model_version)

    def move_to(self, status: RequestStatus) -> None:
        """Record a status change (the caller writes the entry to the ledger)."""
        self.status = status
        self.history.append({"status": status.value, "at": now_iso()})

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return entry_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeletionRequest:
        kwargs, extra = split_known(cls, d)
        # A status this version does not know is an error, not a guess.
        kwargs["status"] = RequestStatus.parse(d.get("status", "received"))
        kwargs["mode"] = RequestMode(d.get("mode", "exact"))
        kwargs["kind"] = RequestKind(d.get("kind", "forget"))
        if d.get("plan") is not None:
            kwargs["plan"] = DeletionPlan.from_dict(d["plan"])
        if d.get("decision") is not None:
            kwargs["decision"] = Decision.from_dict(d["decision"])
        for name in (
            "approvals",
            "history",
            "checkpoints_before",
            "retrained",
            "errors",
            "subject_hashes",
            "id_hashes",
            "record_hashes",
            "rectified",
        ):
            kwargs[name] = list(d.get(name) or [])
        for name in ("timings", "evidence"):
            kwargs[name] = dict(d.get(name) or {})
        kwargs["versions"] = RequestVersions.from_dict(d.get("versions"))
        return cls(**kwargs, extra=extra)

    def public_dict(self) -> dict[str, Any]:
        """What `sisa requests/certificate --json` print: the entry without the id hashes."""
        hidden = ("id_hashes", "record_hashes")
        return {k: v for k, v in self.to_dict().items() if k not in hidden} | {"id_hash_count": len(self.id_hashes)}


# -- the ledger ---------------------------------------------------------------------------------
def all_requests(store: Store) -> list[DeletionRequest]:
    """Every deletion request in the ledger, oldest first, typed."""
    return [DeletionRequest.from_dict(d) for d in ledgers.list_requests(store.fs)]


def read_request(store: Store, request_id: str) -> DeletionRequest:
    return DeletionRequest.from_dict(ledgers.read_request(store.fs, request_id))


def write_request(store: Store, req: DeletionRequest) -> None:
    ledgers.write_request(store.fs, req.to_dict())


def open_requests(store: Store) -> list[DeletionRequest]:
    return [r for r in all_requests(store) if r.status.is_open]


def unfinished_requests(store: Store, with_batch: bool = False) -> list[DeletionRequest]:
    """The open requests that new work must wait for: the one place that says what "unfinished
    work blocks me" means. A request waiting in the queue (`queued`) never blocks: its records are
    marked and its relief serves. A request in flight (carried out alone, or cut short before it
    was queued) always does: it commits from the version it started from when it resumes. The
    requests of a batch a crash cut short block too, unless the new work is `with_batch`: a
    request filed for the batch (the resumed batch takes it, or the batch's version keeps it
    relieved) or the batch itself (`sisa process`, `sisa train` carry it out). A request awaiting
    approval never blocks either: when approved it is carried out by a batch, from the version
    serving then."""
    waiting = (RequestStatus.QUEUED, RequestStatus.AWAITING_APPROVAL)  # an approver may take days: it blocks nobody
    return [r for r in open_requests(store) if r.status not in waiting and not (with_batch and r.batch_owned)]


def refuse_unfinished(store: Store, doing: str, with_batch: bool = False) -> None:
    """Raise RefusedError naming the `unfinished_requests` and how to finish them, before `doing`."""
    blocking = unfinished_requests(store, with_batch)
    if blocking:
        batch = any(r.batch_owned for r in blocking)
        how = "`sisa forget --resume`" + (", and `sisa process` for a batch a crash cut short," if batch else "")
        raise RefusedError(
            f"deletion request(s) {', '.join(r.request_id for r in blocking)} are not finished; {doing} now could "
            f"bring deleted data back or commit over them. Run {how} first."
        )


def forgotten_hashes(store: Store, include_open: bool = True) -> set[str]:
    """Keyed hashes of every id a request has deleted (or, with `include_open`, is deleting)."""
    out: set[str] = set()
    for r in all_requests(store):
        if r.status == RequestStatus.COMPLETED or (include_open and r.status.is_open):
            out.update(r.id_hashes)
    return out


def selector_hashes(store: Store, kind: str, values: list[str]) -> list[str]:
    """Keyed hashes of selector values, by kind: a source named like a subject is another value."""
    return store.hash_ids([f"{kind}\x00{v}" for v in values])


def forgotten_selector_hashes(store: Store) -> set[str]:
    done = [r for r in all_requests(store) if r.status == RequestStatus.COMPLETED]
    return {h for r in done for h in r.selector.get("value_hashes", []) + r.subject_hashes}
