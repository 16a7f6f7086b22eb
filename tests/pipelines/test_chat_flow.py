"""Issue 15's "done when", as a user would run it: a JSONL of chat records ingests, trains,
answers through `sisa generate --chat`, is scored by `sisa eval`, and one conversation's subject
is forgotten with `verify --replay` passing; a malformed conversation is refused naming its line."""

from __future__ import annotations

import json

from sisa.storage import ledgers
from sisa.storage.store import Store

from sisa.data.formats import CHAT, Example
from sisa.data.synthetic import write_jsonl
from sisa.serving import engine as serving
from tests.helpers import cli_args, run_cli


def test_chat_records_end_to_end(tmp_path, capfd):
    args = cli_args(tmp_path / "s", "sharding.slice_size=8", "training.epochs=10")  # enough to learn them
    code, out, err = run_cli("synth", "--people", "12", "--format", "chat", "--out", str(tmp_path / "chats.jsonl"))
    assert code == 0 and "24 chat records" in out, err
    first = json.loads((tmp_path / "chats.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]

    # A malformed conversation in a second file: refused, naming its line, nothing written.
    bad = [
        dict(first, record_id="bad-1"),
        dict(first, record_id="bad-2", messages=[{"role": "user", "content": "Hello?"}]),
    ]
    write_jsonl(bad, tmp_path / "bad.jsonl")
    code, _, err = run_cli("ingest", str(tmp_path / "bad.jsonl"), *args)
    assert code == 4 and "no assistant turn" in err and "line 2" in err and "line 1" not in err
    assert not (tmp_path / "s").exists()

    code, out, err = run_cli("ingest", str(tmp_path / "chats.jsonl"), *args)
    assert code == 0 and "ingested 24 chat record(s)" in out, err
    code, out, err = run_cli("status", *args)
    assert code == 0 and "record_format" in out and " chat " in out, err
    code, out, err = run_cli("train", *args)
    assert code == 0 and "committed model version 1" in out, err
    # The default trains the questions at a small weight (training.prompt_loss_weight): no note.
    assert "no evidence in a prompt" not in err
    code, out, err = run_cli(
        "generate", "--chat", "--prompt", "Where does Ada Lane live?", "--max-new-tokens", "8", "--json", *args
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["chat"] is True and res["model_version"] == 1 and isinstance(res["completion"], str)
    code, out, err = run_cli("eval", "--file", str(tmp_path / "chats.jsonl"), "--json", *args)
    assert code == 0, err
    assert json.loads(out)["answer_only"] is True  # chat records are scored on the assistant's turns

    # Forget one conversation's subject, with records no model saw as the holdout baseline.
    subject = first["subject_id"]
    run_cli("synth", "--people", "3", "--start", "100", "--format", "chat", "--out", str(tmp_path / "holdout.jsonl"))
    code, out, err = run_cli("forget", "--subject", subject, "--holdout", str(tmp_path / "holdout.jsonl"), *args)
    assert code == 0, err
    code, out, err = run_cli("verify", "--replay", *args)
    assert code == 0 and "verified" in out, err
    store = Store.open(str(tmp_path / "s"))
    (req,) = ledgers.list_requests(store.fs)
    ev = req["evidence"]
    assert req["status"] == "completed" and req["records"] == 2
    assert (
        ev["answer_tokens_only"] is True
        and ev["loss_before"] is not None
        and ev["holdout_records"] == 6
        and ev["holdout_before"] is not None
    )
    # Trained conversations score lower than after the forget: the evidence can tell. The tiny
    # random model must have learned them first (their loss below the holdout's): at 3 epochs it
    # had not (5.353 against 5.351), and the comparison below was a coin toss.
    assert ev["loss_before"] < ev["holdout_before"], ev
    assert ev["loss_before"] < ev["loss_after"], ev


def test_generate_chat_renders_the_template_and_stops_at_the_end_of_turn(make_trained_store):
    """The reply is what training taught: one conversation trained many times comes back."""
    row = {
        "record_id": "c1",
        "messages": [{"role": "user", "content": "Code?"}, {"role": "assistant", "content": "Blue 42."}],
    }
    cfg, store = make_trained_store(
        [row], "sharding.num_shards=1", "training.min_steps_per_slice=150", "training.lr=0.01", "lora.r=8"
    )
    _, ens = serving.load_serving(store, cfg)
    assert serving.chat_prompt(ens, [("user", "Code?")]) == "<bos><|user|>Code?<eos><|assistant|>"
    assert serving.generate_chat(ens, [("user", "Code?")], max_new_tokens=12) == "Blue 42."
    # Scoring the assistant turn: the trained answer is likelier than another one (the tiny random
    # model learns slowly, so by a margin, not to zero).
    trained = Example(CHAT, messages=(("user", "Code?"), ("assistant", "Blue 42.")))
    other = Example(CHAT, messages=(("user", "Code?"), ("assistant", "Red 17.")))
    losses, _ = serving.score_records(ens, [trained, other])
    assert losses[0] + 0.5 < losses[1]


def test_train_notes_a_prompt_blind_posterior_only_under_completion_only_loss(tmp_path):
    """The note is about completion-only training of structured records (prompt_loss_weight 0):
    text records, loss_on=all and the default prompt weight train the prompts too, so the
    posterior has its evidence."""
    run_cli("synth", "--people", "4", "--format", "chat", "--out", str(tmp_path / "chats.jsonl"))
    run_cli("synth", "--people", "4", "--out", str(tmp_path / "text.jsonl"))
    cases = (
        ("completion-only", "chats.jsonl", ["training.prompt_loss_weight=0"], True),
        ("all", "chats.jsonl", ["training.loss_on=all"], False),
        ("text", "text.jsonl", ["training.prompt_loss_weight=0"], False),
    )
    for name, file, extra, noted in cases:
        args = cli_args(tmp_path / name, "training.epochs=1", *extra)
        assert run_cli("ingest", str(tmp_path / file), *args)[0] == 0
        code, out, err = run_cli("train", *args)
        assert code == 0 and "committed model version 1" in out, err
        assert ("no evidence in a prompt" in err) == noted, name
        if noted:
            assert "training.prompt_loss_weight" in err and "training.loss_on=all" in err
