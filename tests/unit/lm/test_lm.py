"""The shared language-model toolkit: packing, the one next-token score, held-out loss, checkpoints,
TrainingArguments defaults. Tiny models built from a config; the real SmolLM2 tokenizer for chat templates."""

from __future__ import annotations

import math

import pytest

from aptops.core.errors import ConfigError, InvalidArtifactError


def _tiny_lm(vocab: int = 37, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)).eval()


def test_next_token_scores_are_the_cross_entropy_of_the_following_token():
    import torch

    from aptops.lm import next_token_scores

    model = _tiny_lm()
    ids = torch.randint(0, 37, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # row 1 padded from position 6 on
    scores = next_token_scores(model, ids, mask)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    expected = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    assert torch.allclose(scores.nll, expected, atol=1e-5)
    assert torch.equal(scores.top1, logits.argmax(-1))
    assert scores.mask.tolist()[1] == [True] * 5 + [False] * 3  # targets 1..5 are real tokens, 6..8 padding
    # a student with a padded embedding: only the tokenizer's vocabulary is scored
    small = ids.clamp(max=29)  # the tokenizer's ids stop at 30
    cut = next_token_scores(model, small, vocab=30)
    full = next_token_scores(model, small)
    assert int(cut.top1.max()) < 30 and (cut.nll <= full.nll + 1e-6).all() and (cut.nll < full.nll - 1e-4).all()


def test_heldout_loss_is_the_mean_over_counted_tokens_and_refuses_nothing_to_score():
    import torch

    from aptops.lm import heldout_loss, next_token_scores, perplexity

    model = _tiny_lm()
    a = torch.randint(0, 37, (2, 8), generator=torch.Generator().manual_seed(2))
    b = {"input_ids": torch.randint(0, 37, (1, 5), generator=torch.Generator().manual_seed(3)),
         "attention_mask": torch.tensor([[1, 1, 1, 0, 0]])}
    got = heldout_loss(model, [a, b])
    sa, sb = next_token_scores(model, a), next_token_scores(model, b["input_ids"], b["attention_mask"])
    total = float(sa.nll.sum()) + float(sb.nll[0, :2].sum())
    assert got["tokens"] == 14 + 2
    assert got["loss"] == pytest.approx(total / 16, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]), rel=1e-6)
    assert perplexity(1e6) == math.exp(50.0)  # a diverged model: huge, finite
    with pytest.raises(InvalidArtifactError, match="no token to score"):
        heldout_loss(model, [torch.zeros((1, 1), dtype=torch.long)])


def test_evaluate_perplexity_packs_blocks_and_counts_their_tokens(tiny_llama):
    import datasets

    from aptops.lm import EvalConfig, evaluate_perplexity

    docs = datasets.Dataset.from_dict({"text": ["The quick brown fox jumps over the lazy dog."] * 30})
    got = evaluate_perplexity(str(tiny_llama), docs, EvalConfig(block_size=16, batch_size=4, max_blocks=5))
    assert got["blocks"] == 5 and got["tokens"] == 5 * 15
    assert 1 < got["perplexity"] < 10 * 512  # a random 512-token model: near the vocabulary size, not beyond
    with pytest.raises(InvalidArtifactError, match="no block of 4096 tokens"):
        evaluate_perplexity(str(tiny_llama), docs.select(range(1)), EvalConfig(block_size=4096))
    with pytest.raises(ConfigError, match="batch_size"):
        EvalConfig(batch_size=0)


def test_packing_joins_documents_with_eos_into_full_blocks(tiny_llama):
    import datasets
    from transformers import AutoTokenizer

    from aptops.lm import pack_for_clm

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    docs = datasets.Dataset.from_dict({"text": ["The quick brown fox.", "", "Prometheus watches it."] * 10,
                                       "label": [0, 1, 2] * 10})
    packed = pack_for_clm(docs, tok, block_size=8)
    assert packed.column_names == ["input_ids", "attention_mask", "labels"]
    stream = [t for block in packed["input_ids"] for t in block]
    per_round = len(tok("The quick brown fox.")["input_ids"]) + len(tok("Prometheus watches it.")["input_ids"]) + 2
    assert len(stream) == (10 * per_round // 8) * 8 and stream.count(tok.eos_token_id) >= 2 * (len(stream) // per_round)
    assert all(len(b) == 8 for b in packed["input_ids"]) and packed["labels"] == packed["input_ids"]
    rows = pack_for_clm(docs, tok, block_size=4, packing=False)
    assert len(rows) == 30 and max(len(r) for r in rows["input_ids"]) <= 4


def test_training_arguments_defaults_recipe_and_user_layers(tmp_path):
    from aptops.lm import training_arguments

    args = training_arguments(tmp_path, {"learning_rate": 3e-4, "logging_steps": 3}, seed=5, has_eval=True,
                              recipe_defaults={"logging_steps": 7, "save_steps": 11})
    assert (args.logging_steps, args.save_steps, args.seed, args.data_seed) == (3, 11, 5, 5)
    assert args.eval_strategy == "epoch" and args.report_to == []
    plain = training_arguments(tmp_path, {}, has_eval=False)
    assert plain.logging_steps == 0.01 and plain.eval_strategy == "no"  # a log every 1% of the run
    streamed = training_arguments(tmp_path, {"max_steps": 4}, has_eval=True, streaming=True)
    assert streamed.eval_strategy == "steps" and streamed.eval_steps == 200
    stopping = training_arguments(tmp_path, {"eval_steps": 5}, has_eval=True, early_stopping_patience=2)
    assert stopping.load_best_model_at_end and stopping.save_steps == 5 and stopping.metric_for_best_model == "eval_loss"
    with pytest.raises(ConfigError, match="early stopping needs evaluation"):
        training_arguments(tmp_path, early_stopping_patience=2)
    with pytest.raises(ConfigError, match=r"training_args: .*no_such_field"):
        training_arguments(tmp_path, {"no_such_field": 1})


def test_chat_prompt_renders_documents_as_answers_and_keeps_turns(smollm2, tiny_llama):
    """Raw documents packed into an instruct model end with its end-of-turn token; as chat answers they do not."""
    import datasets
    from transformers import AutoTokenizer

    from aptops.lm import pack_for_clm

    tok = AutoTokenizer.from_pretrained(smollm2)
    docs = datasets.Dataset.from_dict({"text": ["You will travel far.", "Beware of dogs.", ""] * 20})
    chat = pack_for_clm(docs, tok, block_size=32, chat_prompt="Tell me a fortune.")
    stream = [t for block in chat["input_ids"] for t in block]
    text = tok.decode(stream)
    assert "<|im_start|>user\nTell me a fortune.<|im_end|>\n<|im_start|>assistant\nYou will travel far.<|im_end|>" in text
    assert text.count("<|im_end|><|im_end|>") == 0  # no extra separator after a rendered turn
    plain = tok.decode([t for block in pack_for_clm(docs, tok, block_size=32)["input_ids"]
                        for t in block])
    assert "You will travel far.<|im_end|>Beware" in plain and "assistant" not in plain
    with pytest.raises(ConfigError, match="chat template"):
        pack_for_clm(docs, AutoTokenizer.from_pretrained(tiny_llama), block_size=8, chat_prompt="x")


def test_held_out_text_is_scored_in_the_chat_format_the_model_was_trained_in(smollm2):
    """``EvalConfig.chat_prompt`` scores the same blocks training evaluates on (documents as answers to the prompt),
    so a comparison of models trained that way reports the perplexity their training did, not a plain-text one."""
    import datasets
    import torch
    from transformers import AutoTokenizer

    from aptops.lm import EvalConfig, evaluate_perplexity, heldout_loss, pack_for_clm

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = _tiny_lm(vocab=len(tok))
    docs = datasets.Dataset.from_dict({"text": ["You will travel far.", "Beware of dogs.", "A friend is near."] * 8})
    chat = evaluate_perplexity(model, docs, EvalConfig(block_size=32, batch_size=4, chat_prompt="Tell me a fortune."),
                               tokenizer=tok)
    plain = evaluate_perplexity(model, docs, EvalConfig(block_size=32, batch_size=4), tokenizer=tok)
    blocks = pack_for_clm(docs, tok, block_size=32, chat_prompt="Tell me a fortune.")
    ids = torch.tensor(blocks["input_ids"])
    expected = heldout_loss(model, [ids[i:i + 4] for i in range(0, len(ids), 4)])
    assert chat["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert chat["tokens"] == expected["tokens"] != plain["tokens"]


def test_a_checkpoint_cut_off_while_saving_is_skipped_and_removed(tmp_path):
    from aptops.lm import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "none") is None
    for step, whole in ((10, True), (20, True), (30, False)):  # killed while writing checkpoint-30
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"w")
        if whole:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    assert not (tmp_path / "checkpoint-30").exists() and (tmp_path / "checkpoint-x").exists()


def test_training_args_are_read_and_bounded_before_any_work():
    """Issue 25: per_device_train_batch_size=-1 and learning_rate=nan failed only after the model loaded;
    max_steps=10**12 was accepted."""
    import pytest

    from aptops.core.errors import ConfigError
    from aptops.lm import parse_training_args

    assert parse_training_args({"learning_rate": "1e-4", "max_steps": "-1", "report_to": "none",
                                "logging_steps": 0.1}) == {"learning_rate": 1e-4, "max_steps": -1,
                                                           "report_to": "none", "logging_steps": 0.1}
    for bad, message in (({"per_device_train_batch_size": -1}, r"per_device_train_batch_size=-1 is out of range"),
                         ({"learning_rate": "nan"}, r"learning_rate=nan must be a finite number"),
                         ({"max_grad_norm": float("inf")}, r"max_grad_norm=inf must be a finite number"),
                         ({"max_steps": 10**12}, r"max_steps=1000000000000 is out of range"),
                         ({"max_steps": -2}, r"max_steps=-2 is out of range"),
                         ({"eval_steps": 0}, r"eval_steps=0 is out of range"),
                         ({"num_train_epochs": -2}, r"num_train_epochs=-2 is out of range"),
                         ({"per_device_train_batch_sise": 4}, "did you mean 'per_device_train_batch_size'")):
        with pytest.raises(ConfigError, match=message):
            parse_training_args(bad)
