"""The real SmolLM2-135M, converted from the shipped GGUF, tokenizes like llama.cpp and runs."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

SAMPLES = [
    "Hello world",
    "Order 12345 shipped on 2026-11-26 at   3 pm",
    "pi is   3.14159 and e is 2.71828",
    "<|im_start|>user\nWhat is 7*8?<|im_end|>",
]


def test_tokenizer_matches_llama_cpp(smollm2):
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from aptops.core.assets import smollm2_gguf_path

    hf = AutoTokenizer.from_pretrained(smollm2)
    ref = llama_cpp.Llama(model_path=str(smollm2_gguf_path()), vocab_only=True, verbose=False)
    for text in SAMPLES:
        want = ref.tokenize(text.encode(), add_bos=False, special=True)
        got = hf(text, add_special_tokens=False)["input_ids"]
        assert got == want, text
    ref.close()


def test_digit_split_restored(smollm2):
    pre = json.loads((smollm2 / "tokenizer.json").read_text())["pre_tokenizer"]
    assert pre["type"] == "Sequence"
    assert pre["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}


def test_converted_model_generates(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])
