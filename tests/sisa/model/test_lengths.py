"""Records measured in tokens (issue 32 §1): percentiles, the model's context cap, and the checks
that refuse by record id (never text) what `training.truncation` does not allow."""

from __future__ import annotations

import pytest
from sisa.storage.errors import ValidationError

from sisa.config import ModelConfig
from sisa.data import formats
from sisa.data.formats import Example
from sisa.model.base import load_tokenizer
from sisa.model.lengths import check_lengths, effective_max_length, length_report, measure_records


def test_length_report_counts_and_nearest_rank_percentiles():
    r = length_report(list(range(1, 101)), 90)
    assert (r.records, r.p50, r.p95, r.max, r.over, r.capped) == (100, 50, 95, 100, 10, False)
    assert r.metrics() == {
        "length_records": 100.0,
        "length_p50": 50.0,
        "length_p95": 95.0,
        "length_max": 100.0,
        "length_max_length": 90.0,
        "length_over": 10.0,
    }
    capped = length_report([3, 700], 1024, context=512)
    assert (capped.max_length, capped.over, capped.capped) == (512, 1, True)
    assert "max_length 512 (training.max_length 1024 capped at the model's context)" in capped.describe()
    assert (
        length_report([], 64).describe()
        == "record lengths in tokens: p50 0, p95 0, max 0 (0 records); none over max_length 64"
    )
    assert effective_max_length(1024, None) == 1024 and effective_max_length(64, 512) == 64


def test_load_tokenizer_gives_the_models_tokenizer_and_context():
    tokenizer, context = load_tokenizer(ModelConfig())
    assert context == 512 and tokenizer.pad_token_id is not None and tokenizer.chat_template


def test_refuse_names_ids_and_cut_refuses_only_records_left_with_nothing_to_train():
    tokenizer, context = load_tokenizer(ModelConfig())
    secret = "a private note that is rather long"
    items = [
        "short",
        secret,
        Example(formats.PROMPT_COMPLETION, prompt="A long question " * 3, completion=" Yes."),
    ]
    ids = ["ok", "long-text", "long-prompt"]
    report, encoded = measure_records(tokenizer, items, 24, context, "completion", "refuse")
    assert report.over == 2
    with pytest.raises(ValidationError) as err:
        check_lengths(ids, encoded, report)
    assert "2 record(s) are longer than max_length 24" in err.value.message
    assert "long-text, long-prompt" in err.value.message and "ok" not in err.value.message.split(":")[1]
    assert secret not in err.value.message
    # cut: a cut text still trains its start; a prompt that fills the window would train nothing.
    report, encoded = measure_records(tokenizer, items, 24, context, "completion", "cut")
    with pytest.raises(ValidationError, match="1 record\\(s\\) keep no trained token .*: long-prompt;"):
        check_lengths(ids, encoded, report)
    check_lengths(ids[:2], encoded[:2], report)  # nothing to refuse
    # loss_on=all trains the prompt too: nothing is left empty.
    report, encoded = measure_records(tokenizer, items, 24, context, "all", "cut")
    check_lengths(ids, encoded, report)


def test_record_lengths_count_as_the_encoder_does():
    from sisa.model.base import TINY_CHAT_TEMPLATE
    from sisa.model.lengths import record_lengths
    from sisa.model.loss import encode_records

    tokenizer, _ = load_tokenizer(ModelConfig())
    assert tokenizer.chat_template == TINY_CHAT_TEMPLATE
    items = [
        "short",
        "x" * 300,
        Example(formats.PROMPT_COMPLETION, prompt="Where? ", completion="Here."),
        Example(formats.CHAT, messages=(("system", "Be brief."), ("user", "Where?"), ("assistant", "Here."))),
    ]
    assert record_lengths(tokenizer, items) == [r.length for r in encode_records(tokenizer, items, 16)]
    assert record_lengths(tokenizer, []) == []
