"""Tiny models for tests, built from a config (no hub download is possible here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Language models learn from text; clean text makes better models.",
    "Kubernetes runs the pipeline; Prometheus watches it.",
    "Numbers like 12345 and 2026 appear in real text too.",
    "GGUF files carry the weights and the tokenizer together.",
] * 20


def build_tiny_llama(folder: Path, *, vocab_size: int = 512, seed: int = 0, **config: Any) -> Path:
    """Train a byte-level BPE tokenizer on a small corpus and save a random 2-layer Llama with it; ``config``
    overrides ``LlamaConfig`` fields (``rope_parameters=`` ...)."""
    return build_tiny_causal_lm(folder, "llama", vocab_size=vocab_size, seed=seed, **config)


def build_tiny_causal_lm(folder: Path, model_type: str = "llama", *, tokenizer_from: Path | None = None,
                         vocab_size: int = 512, seed: int = 0, **config: Any) -> Path:
    """A random 2-block causal LM of any transformers ``model_type`` (``gemma2``, ``qwen3_moe`` ...), 64 wide with
    4 heads of 16, saved with a tokenizer: a byte-level BPE trained here on :data:`CORPUS`, or the one in
    ``tokenizer_from`` (a SentencePiece folder, say); ``config`` overrides the config's fields."""
    import shutil

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_from / name).is_file():
                shutil.copy(tokenizer_from / name, folder / name)
        fast = AutoTokenizer.from_pretrained(folder)
    else:
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(CORPUS, trainer=trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        )
        fast.save_pretrained(folder)
    torch.manual_seed(seed)
    fields = {
        "vocab_size": len(fast), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "tie_word_embeddings": True, "bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id,
        "pad_token_id": fast.pad_token_id if fast.pad_token_id is not None else fast.eos_token_id,
    }
    if model_type != "llama":
        fields["head_dim"] = 16
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **(fields | config)))
    model.save_pretrained(folder)
    # saved again as transformers reads it beside this config: a model type can bring its tokenizer class's own
    # split rules (Qwen2's digits one by one), and the folder should say what the model really sees
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)
    return folder


def build_tiny_spm_llama(folder: Path, *, vocab_size: int = 400, seed: int = 0) -> Path:
    """Train a SentencePiece BPE model (byte fallback, digits split: the Llama 2 / Mistral v0.1 recipe) and save a
    random 2-layer Llama with it: ``tokenizer.model`` beside the ``tokenizer.json`` transformers converts it to."""
    import json
    import shutil
    import tempfile

    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as work:
        text = Path(work) / "corpus.txt"
        text.write_text("\n".join(CORPUS), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(text), model_prefix=f"{work}/sp", vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
            split_digits=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
        source = Path(work) / "source"
        source.mkdir()
        shutil.copy(f"{work}/sp.model", source / "tokenizer.model")
        (source / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": True, "legacy": True}))
        tok = AutoTokenizer.from_pretrained(source)
        if len(tok) != vocab_size:
            raise RuntimeError(f"transformers read {len(tok)} of {vocab_size} SentencePiece pieces: sentencepiece's "
                               "generated proto needs a protobuf it can load (see the train extra's pin)")
        tok.save_pretrained(folder)
        shutil.copy(source / "tokenizer.model", folder / "tokenizer.model")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_tiny_seq2seq(folder: Path, *, seed: int = 0) -> Path:
    """A random 1-layer Marian translation model with a BPE tokenizer (stands in for opus-mt en-de)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")
    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=len(fast), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id, decoder_start_token_id=fast.pad_token_id,
        forced_eos_token_id=fast.eos_token_id,
    )
    MarianMTModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_tiny_gguf(path: Path) -> Path:
    """A minimal valid GGUF (two small tensors, a three-token list), written with the gguf package."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_tensor("token_embd.weight", np.arange(96, dtype=np.float32).reshape(3, 32))
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return path


def build_trained_llama(folder: Path, texts: list[str], *, hidden: int = 256, intermediate: int = 512,
                        layers: int = 2, vocab_size: int = 1024, steps: int = 400, seed: int = 0) -> Path:
    """A small Llama whose widths are multiples of 256 (so llama.cpp's k-quants apply without fallback), with a
    byte-level BPE tokenizer trained on ``texts`` and weights trained on them for ``steps`` steps: its
    predictions are peaked like a real model's, so quantized top-1 agreement means something."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    model = LlamaForCausalLM(config)
    ids = torch.tensor(fast("<|endoftext|>".join(texts)).input_ids)
    block, batch = 128, 8
    blocks = ids[: len(ids) // block * block].view(-1, block)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        rows = blocks[torch.randint(len(blocks), (batch,), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
