"""Text to causal-LM training rows: documents joined by EOS and cut into full blocks (no padding wasted),
or one truncated document per row; chat models trained on plain documents as assistant turns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aptops.core.errors import ConfigError


def pack_for_clm(dataset: Any, tokenizer: Any, *, block_size: int, text_column: str = "text", chat_prompt: str = "",
                 packing: bool = True) -> Any:
    """Tokenise ``dataset``'s text for causal-LM training or evaluation.

    Args:
        dataset: a ``datasets.Dataset`` or ``IterableDataset`` with ``text_column``.
        tokenizer: the model's tokenizer.
        block_size: tokens per row.
        text_column: the column holding the text.
        chat_prompt: when set, each document becomes the assistant turn after this user message, rendered
            with the tokenizer's chat template (packing raw text into an instruct model would join documents
            with its end-of-turn token and teach it to end every answer at once).
        packing: join documents (separated by EOS) and cut full blocks; off: one document per row, truncated.

    Returns:
        A dataset with ``input_ids``, ``attention_mask`` and (packed) ``labels`` columns.

    Raises:
        ConfigError: ``chat_prompt`` is set but the tokenizer has no chat template.
    """
    eos = tokenizer.eos_token_id
    remove = list(getattr(dataset, "column_names", None) or [text_column])
    chat = bool(chat_prompt)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat_prompt needs a tokenizer with a chat template; this one has none (train it on "
                          "plain text: leave chat_prompt empty)", field="chat_prompt")

    def texts(batch: Mapping[str, list[Any]]) -> list[str]:
        docs = [t or "" for t in batch[text_column]]
        if not chat:
            return docs
        return [tokenizer.apply_chat_template([{"role": "user", "content": chat_prompt},
                                               {"role": "assistant", "content": d}], tokenize=False) if d else ""
                for d in docs]

    if not packing:
        def encode(batch: Mapping[str, list[Any]]) -> dict[str, Any]:
            return tokenizer(texts(batch), truncation=True, max_length=block_size, add_special_tokens=not chat)

        return dataset.map(encode, batched=True, remove_columns=remove)

    def pack(batch: Mapping[str, list[Any]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(texts(batch), add_special_tokens=False)["input_ids"]
        stream: list[int] = []
        for doc in ids:
            if doc:
                stream.extend(doc)
                if eos is not None and not chat:  # a rendered conversation already ends its turn
                    stream.append(eos)
        n = (len(stream) // block_size) * block_size
        blocks = [stream[i:i + block_size] for i in range(0, n, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks],
                "labels": [b[:] for b in blocks]}

    return dataset.map(pack, batched=True, batch_size=1000, remove_columns=remove)
