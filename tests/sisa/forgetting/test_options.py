"""RequestOptions: what a caller chooses about a request, checked before anything is touched."""

from __future__ import annotations

import dataclasses

import pytest
from sisa.storage.errors import ValidationError

from sisa.evidence import Probe
from sisa.forgetting import Filer, RequestOptions
from sisa.lineage import RequestMode


def test_defaults_are_a_request_carried_out_at_once_exactly_with_evidence():
    o = RequestOptions()
    assert (o.mode, o.queue, o.dry_run, o.allow_missing, o.evidence) == (RequestMode.EXACT, False, False, False, True)
    assert o.filer == Filer() and o.holdout is None and o.probes is None and o.idempotency_key is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.queue = True  # type: ignore[misc]


def test_a_mode_by_name_becomes_the_enum_and_probes_a_tuple():
    probe = Probe("Norma Fisher works as a", " pilot.", "paraphrase")
    o = RequestOptions(mode="relief", probes=[probe])  # type: ignore[arg-type]
    assert o.mode is RequestMode.RELIEF and o.probes == (probe,)


def test_every_bad_option_is_named_at_once():
    with pytest.raises(ValidationError) as e:
        RequestOptions(mode="fastest", probes=["a prompt"], holdout=["a"], filer="alice")  # type: ignore[arg-type]
    message = e.value.message
    for part in ("mode should be one of exact, relief, fast, isolate, got 'fastest'", "probes", "holdout", "filer"):
        assert part in message
