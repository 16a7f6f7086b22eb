"""How records of each format become tokens and labels (issue 15 §2): completion-only labels,
chat templates, truncation that keeps the completion, text records encoded as before."""

from __future__ import annotations

import pytest
import torch

from sisa.config import ModelConfig, load_config
from sisa.data import formats
from sisa.data.formats import Example
from sisa.model import encode_texts, load_base_model, render_chat
from sisa.model.loss import fit_window
from storage.errors import ConfigError, SisaError
from tests.helpers import TINY


@pytest.fixture(scope="module")
def tokenizer():
    return load_base_model(ModelConfig())[1]


def _labelled(tokenizer, batch, row: int) -> str:
    labels = batch["labels"][row]
    return tokenizer.decode(labels[labels != -100])


def test_text_records_encode_exactly_as_before_formats(tokenizer):
    texts = ["Ada Lane works as a pilot.", "x" * 100, "é ü"]
    batch = encode_texts(tokenizer, texts, 16)
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    for i, row in enumerate(ids):
        want = row[:15] + [tokenizer.eos_token_id]
        assert batch["input_ids"][i, : len(want)].tolist() == want
        assert batch["labels"][i, : len(want)].tolist() == want
        assert (batch["labels"][i, len(want) :] == -100).all()
    # loss_on does not touch a text record: it is all completion.
    assert all(torch.equal(batch[k], encode_texts(tokenizer, texts, 16, "all")[k]) for k in batch)


def test_prompt_completion_labels_only_the_completion(tokenizer):
    ex = Example(formats.PROMPT_COMPLETION, prompt="Ada Lane works as a", completion=" pilot.")
    batch = encode_texts(tokenizer, [ex, "plain"], 64)
    assert _labelled(tokenizer, batch, 0) == " pilot.<eos>"
    assert tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1]) == "<bos>Ada Lane works as a pilot.<eos>"
    every = encode_texts(tokenizer, [ex], 64, "all")
    assert _labelled(tokenizer, every, 0) == "<bos>Ada Lane works as a pilot.<eos>"


def test_chat_labels_only_the_assistant_turns_through_the_template(tokenizer):
    ex = Example(formats.CHAT, messages=(("system", "Be brief."), ("user", "Where?"), ("assistant", "Here."), ("user", "When?"), ("assistant", "Now.")))
    text, spans = render_chat(tokenizer, ex.messages)
    assert text == "<bos><|system|>Be brief.<eos><|user|>Where?<eos><|assistant|>Here.<eos><|user|>When?<eos><|assistant|>Now.<eos>"
    assert [text[a:b] for a, b in spans] == ["Here.<eos>", "Now.<eos>"]
    batch = encode_texts(tokenizer, [ex], 128)
    assert _labelled(tokenizer, batch, 0) == "Here.<eos>Now.<eos>"
    assert _labelled(tokenizer, encode_texts(tokenizer, [ex], 128, "all"), 0) == text


def test_truncation_keeps_the_completion(tokenizer):
    ex = Example(formats.PROMPT_COMPLETION, prompt="A long question about many things " * 4, completion=" Yes.")
    batch = encode_texts(tokenizer, [ex], 12)
    assert batch["input_ids"].shape[1] == 12
    assert _labelled(tokenizer, batch, 0) == " Yes.<eos>"
    # A completion longer than the window keeps its start, one token of context before it.
    assert fit_window(list(range(10)), [False] * 3 + [True] * 7, 4) == ([2, 3, 4, 5], [False, True, True, True])
    assert fit_window(list(range(10)), [False] * 8 + [True] * 2, 4) == ([6, 7, 8, 9], [False, False, True, True])
    assert fit_window(list(range(10)), [True] * 2 + [False] * 8, 4) == ([0, 1, 2, 3], [True, True, False, False])


def test_a_model_without_a_chat_template_is_named(tokenizer):
    tokenizer = load_base_model(ModelConfig())[1]
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="model 'tiny' has no chat template"):
        encode_texts(tokenizer, [Example(formats.CHAT, messages=(("user", "a"), ("assistant", "b")))], 32)


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    tokenizer = load_base_model(ModelConfig())[1]
    # Renders only the last turn: no rendering is a prefix of the next.
    tokenizer.chat_template = "{{ messages[-1]['content'] if messages else '' }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(SisaError, match="training.loss_on=all"):
        render_chat(tokenizer, (("user", "a"), ("assistant", "b")))


def test_loss_on_keeps_old_fingerprints_at_its_default():
    base = load_config(TINY)
    assert base.training.loss_on == "completion"
    assert load_config(TINY, ["training.loss_on=completion"]).training_fingerprint() == base.training_fingerprint()
    assert load_config(TINY, ["training.loss_on=all"]).training_fingerprint() != base.training_fingerprint()
    with pytest.raises(ConfigError, match="loss_on"):
        load_config(TINY, ["training.loss_on=prompt"])


def test_decode_round_trips_the_canonical_forms():
    chat = [{"role": "user", "content": "q é"}, {"role": "assistant", "content": 'a "quoted"\nline'}]
    item = formats.decode(formats.CHAT, formats.encode_chat(chat))
    assert item.messages == (("user", "q é"), ("assistant", 'a "quoted"\nline'))
    assert formats.decode(None, "plain") == "plain" and formats.decode("text", "plain") == "plain"
    pair = formats.decode(formats.PROMPT_COMPLETION, formats.encode_pair("p", " c"))
    assert (pair.prompt, pair.completion) == ("p", " c")
    assert "q é" not in repr(item) and " c" not in repr(pair)  # an Example never prints its content


# A ChatML-style template with a default system turn, as Qwen2 and SmolLM2 ship (written here):
# the assistant's span must still be its content and end-of-turn marker only.
CHATML = (
    "{% if messages and messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_with_a_default_system_turn(tokenizer):
    tokenizer = load_base_model(ModelConfig())[1]
    tokenizer.chat_template = CHATML
    ex = Example(formats.CHAT, messages=(("user", "Where?"), ("assistant", "Here."), ("user", "Why?"), ("assistant", "Because.")))
    text, spans = render_chat(tokenizer, ex.messages)
    assert text.startswith("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhere?")
    assert [text[a:b] for a, b in spans] == ["Here.<|im_end|>\n", "Because.<|im_end|>\n"]
    assert _labelled(tokenizer, encode_texts(tokenizer, [ex], 256), 0) == "Here.<|im_end|>\nBecause.<|im_end|>\n"
    # Too long for the window: the system turn goes first, both answers stay.
    short = encode_texts(tokenizer, [ex], 100)
    assert _labelled(tokenizer, short, 0) == "Here.<|im_end|>\nBecause.<|im_end|>\n"
    assert "You are helpful" not in tokenizer.decode(short["input_ids"][0])
