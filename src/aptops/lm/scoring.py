"""How well a causal LM predicts text: the one held-out loss and perplexity every stage reports.

``next_token_scores`` is the single place a next-token cross-entropy is computed; ``heldout_loss`` sums it
over batches of packed blocks (the mean over tokens, the quantity the Trainer's ``eval_loss`` reports for
packed data), ``evaluate_perplexity`` does the loading and packing around it, ``perplexity`` turns a loss
into a perplexity. Train, distill, prune and the data stage's quality check all measure through here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from aptops.core.config import check_range
from aptops.core.deps import require
from aptops.core.errors import InvalidArtifactError

MAX_LOSS = 50.0  # exp(50) ~ 5e21: a diverged model's perplexity stays a finite, obviously bad number


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped so that a diverged model gives a huge finite number rather than ``inf``."""
    return math.exp(min(loss, MAX_LOSS))


class NextTokenScores(NamedTuple):
    """Per position of a batch (``(batch, length - 1)`` each): the negative log-likelihood of the token that
    follows, the model's most likely next token, and which positions count."""

    nll: Any
    top1: Any
    mask: Any


def next_token_scores(model: Any, input_ids: Any, attention_mask: Any = None, *, vocab: int | None = None) -> NextTokenScores:
    """Score every next-token prediction of one batch (no gradient).

    Args:
        model: a causal LM; ``input_ids`` are moved to its device.
        input_ids: ``(batch, length)`` token ids.
        attention_mask: padding mask; positions whose *target* is padding do not count. ``None``: all count.
        vocab: score only the first ``vocab`` logits (a student whose embedding was padded beyond the tokenizer).

    Returns:
        :class:`NextTokenScores` on the model's device, float32.
    """
    torch = require("torch", extra="train", feature="scoring a language model")
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    mask = attention_mask.to(device) if attention_mask is not None else None
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        if vocab is not None:
            logits = logits[..., :vocab]
        logits = logits.float()
        targets = ids[:, 1:]
        # rows of the vocabulary, not a transposed (batch, vocab, length) view: no second copy of the logits
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                reduction="none").view(targets.shape)
        counted = mask[:, 1:].bool() if mask is not None else torch.ones_like(targets, dtype=torch.bool)
        return NextTokenScores(nll=nll, top1=logits.argmax(-1), mask=counted)


def heldout_loss(model: Any, batches: Iterable[Any]) -> dict[str, float]:
    """Mean next-token loss over every counted position of ``batches`` (tensors of ids, or dicts with
    ``input_ids`` and optionally ``attention_mask``); the model is left in eval mode.

    Returns:
        ``{"loss", "perplexity", "tokens"}``.

    Raises:
        InvalidArtifactError: there is no token to score.
    """
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        ids, mask = (batch["input_ids"], batch.get("attention_mask")) if isinstance(batch, dict) else (batch, None)
        scores = next_token_scores(model, ids, mask)
        total += float(scores.nll[scores.mask].sum())
        count += int(scores.mask.sum())
    if not count:
        raise InvalidArtifactError("there is no token to score: the held-out text is empty or shorter than 2 tokens")
    mean = total / count
    return {"loss": mean, "perplexity": perplexity(mean), "tokens": float(count)}


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How :func:`evaluate_perplexity` measures a model.

    Attributes:
        block_size: tokens per evaluated sequence (documents packed as in training).
        text_column: the dataset column holding the text.
        batch_size: sequences per forward pass.
        max_blocks: evaluate at most this many blocks (0: all).
        chat_prompt: score each document as the assistant's answer to this user message, rendered with the
            tokenizer's chat template: the format a model trained with ``chat_prompt`` saw, so its held-out
            perplexity here is the one its training reported (empty: plain text).
    """

    block_size: int = 256
    text_column: str = "text"
    batch_size: int = 8
    max_blocks: int = 0
    chat_prompt: str = ""

    def __post_init__(self) -> None:
        check_range("block_size", self.block_size, min_value=2)
        check_range("batch_size", self.batch_size, min_value=1)
        check_range("max_blocks", self.max_blocks, min_value=0)


def eval_blocks(dataset: Any, tokenizer: Any, config: EvalConfig, *, what: str = "the dataset") -> Any:
    """``dataset`` packed into full blocks of ``config.block_size`` tokens, at most ``config.max_blocks`` of them.

    Raises:
        InvalidArtifactError: no full block (``what`` names the text in the message).
    """
    from aptops.lm.packing import pack_for_clm

    blocks = pack_for_clm(dataset, tokenizer, block_size=config.block_size, text_column=config.text_column,
                          chat_prompt=config.chat_prompt)
    if config.max_blocks:
        blocks = blocks.select(range(min(len(blocks), config.max_blocks)))
    if len(blocks) == 0:
        raise InvalidArtifactError(f"{what} yields no block of {config.block_size} tokens to evaluate; "
                                   "lower block_size or add text")
    return blocks


def evaluate_perplexity(model: Any, dataset: Any, config: EvalConfig | None = None, *, tokenizer: Any = None) -> dict[str, float]:
    """Token-level cross-entropy and perplexity of a causal LM on a dataset, packed into full blocks.

    Args:
        model: a model folder, Hub id or ``PreTrainedModel`` (then ``tokenizer`` too).
        dataset: anything :func:`aptops.lm.load_text_dataset` takes.
        config: block size, text column, batch size, block limit.
        tokenizer: the tokenizer when ``model`` is an object.

    Returns:
        ``{"loss", "perplexity", "tokens", "blocks"}``.

    Raises:
        InvalidArtifactError: the dataset yields no full block.
    """
    torch = require("torch", extra="train", feature="evaluation")
    from aptops.lm.loading import load_causal_lm, load_text_dataset

    config = config or EvalConfig()
    model, tokenizer, _ = load_causal_lm(model, tokenizer)
    blocks = eval_blocks(load_text_dataset(dataset, config.text_column), tokenizer, config)
    batches = (torch.tensor(blocks[i:i + config.batch_size]["input_ids"]) for i in range(0, len(blocks), config.batch_size))
    return {**heldout_loss(model, batches), "blocks": float(len(blocks))}
