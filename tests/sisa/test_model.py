"""The base model: deterministic tiny build, batches, losses, local folders, SmolLM2 conversion."""

from __future__ import annotations

import os
import time

import pytest
import torch

from sisa.config import ModelConfig
from sisa.model import (
    base_model_fingerprint,
    encode_texts,
    load_base_model,
    select_device,
    select_dtype,
    sequence_losses,
)
from storage.errors import NotFoundError

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


def test_tiny_fingerprint_is_stable():
    fp = base_model_fingerprint(TINY)
    assert fp == base_model_fingerprint(TINY) and len(fp) == 64


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
    again = encode_texts(tok, ["hello", "a much longer text than eight tokens"], max_length=8)
    assert all(torch.equal(batch[k], again[k]) for k in batch)


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
    assert base_model_fingerprint(cfg) == fp
    assert len(list((tmp_path / "cache" / "fingerprints").iterdir())) == 1


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
        out = model.generate(
            **ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id
        )
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"\nconversion {converted_s:.1f}s, cached load {cached_s:.1f}s, continuation {text!r}")
    assert "Paris" in text
    assert base_model_fingerprint(cfg) == base_model_fingerprint(cfg)
    batch = encode_texts(tok, ["The capital of France is Paris."], max_length=32)
    with torch.no_grad():
        assert sequence_losses(model, batch).item() < 5.0
