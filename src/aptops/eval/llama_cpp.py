"""lm-evaluation-harness requests answered by llama.cpp: a GGUF file judged on the same tasks as its source.

:class:`LlamaCppLM` is a harness ``LM`` (registered as ``aptops-llama-cpp``) over ``llama_cpp.Llama`` in this
process: the harness tokenises context / continuation pairs with the GGUF's own tokenizer (as ``hf`` does with the
source's, no special tokens added), and each request is one llama.cpp evaluation whose per-position logits give the
continuation's log-likelihood and whether it is the greedy choice. Consecutive requests that share a prefix (the
choices of one multiple-choice question) reuse its KV cache, so a question's context is evaluated once.
``loglikelihood_rolling`` scores whole documents in windows of the context length (perplexity tasks) and
``generate_until`` decodes greedily up to the task's stop strings.

The harness's own ``gguf`` model talks to a llama.cpp *server* over HTTP; this one needs no server, so a KFP task
or a laptop evaluates a file directly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError

log = logging.getLogger(__name__)

MODEL_NAME = "aptops-llama-cpp"


def _log_softmax_rows(np: Any, rows: Any) -> Any:
    rows = rows.astype(np.float64)
    top = rows.max(axis=-1, keepdims=True)
    return rows - top - np.log(np.exp(rows - top).sum(axis=-1, keepdims=True))


def load_llama(path: str | Path, *, n_ctx: int = 2048, n_threads: int = 0) -> Any:
    """A ``llama_cpp.Llama`` over a GGUF file with logits for every position (what scoring needs).

    Raises:
        ArtifactNotFoundError: no such file.
        InvalidArtifactError: not a readable GGUF file, or llama.cpp cannot load it.
    """
    require("llama_cpp", extra="export", feature="evaluating a GGUF file (llama-cpp-python: make setup "
                        "builds it, the export image has it)")
    from aptops.lm.gguf import read_gguf

    file = Path(path)
    reader = read_gguf(file)  # missing, truncated or not GGUF at all: a clear error before llama.cpp sees it
    arch = reader.get_field("general.architecture")
    trained = reader.get_field(f"{arch.contents()}.context_length") if arch is not None else None
    # the context the model was trained for caps ours: logits for every position cost n_ctx x vocab floats
    n_ctx = min(n_ctx, int(trained.contents())) if trained is not None else n_ctx
    del reader
    from aptops.lm.llamacpp import open_llama

    kwargs: dict[str, Any] = {"n_ctx": n_ctx, "logits_all": True, "n_batch": min(512, n_ctx)}
    if n_threads:
        kwargs["n_threads"] = n_threads
    return open_llama(file, **kwargs)


def _harness_lm_class() -> type:
    """The ``LM`` subclass, built on first use so that importing this module does not import the harness."""
    api = require("lm_eval.api.model", extra="eval", feature="task evaluation")
    registry = require("lm_eval.api.registry", extra="eval", feature="task evaluation")
    utils = require("lm_eval.utils", extra="eval", feature="task evaluation")
    np = require("numpy", extra="eval", feature="task evaluation")
    tqdm = require("tqdm", extra="eval", feature="task evaluation").tqdm

    class LlamaCppLM(api.TemplateLM):
        """A GGUF file as an lm-evaluation-harness model (``model_args``: ``pretrained=FILE,n_ctx=2048``)."""

        def __init__(self, pretrained: str, n_ctx: int = 2048, n_threads: int = 0, max_gen_toks: int = 256,
                     **kwargs: Any) -> None:
            super().__init__()
            if kwargs.get("apply_chat_template"):
                raise ConfigError("a chat template is not applied to GGUF files here: evaluate without "
                                  "--apply-chat-template, or evaluate the Hugging Face folder", field="apply_chat_template")
            self.path = str(pretrained)
            self.llm = load_llama(pretrained, n_ctx=int(n_ctx), n_threads=int(n_threads))
            self.n_ctx = int(self.llm.n_ctx())
            self.max_gen_toks = int(max_gen_toks)
            self.reused_tokens = 0

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> Any:
            args = utils.simple_parse_args_string(arg_string)
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k in ("max_gen_toks",)}
            return cls(**args, **extra)

        # -- what TemplateLM needs -------------------------------------------------------------------
        @property
        def eot_token_id(self) -> int:
            return int(self.llm.token_eos())

        @property
        def prefix_token_id(self) -> int:
            bos = int(self.llm.token_bos())
            return bos if bos >= 0 else self.eot_token_id

        @property
        def max_length(self) -> int:
            return self.n_ctx

        @property
        def tokenizer_name(self) -> str:
            return Path(self.path).name

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
            return list(self.llm.tokenize(string.encode("utf-8"), add_bos=bool(add_special_tokens), special=False))

        def tok_decode(self, tokens: list[int]) -> str:
            return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

        def _evaluate(self, tokens: list[int]) -> None:
            """Evaluate ``tokens`` into the context, keeping what the previous request already evaluated."""
            llm = self.llm
            shared = 0
            limit = min(llm.n_tokens, len(tokens) - 1)  # re-evaluate at least one token
            while shared < limit and llm.input_ids[shared] == tokens[shared]:
                shared += 1
            llm.n_tokens = shared
            self.reused_tokens += shared
            llm.eval(tokens[shared:])

        def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
            whole = (context + continuation)[-(self.n_ctx + 1):]
            inputs = whole[:-1]
            n = len(continuation)
            self._evaluate(inputs)
            rows = np.asarray(self.llm.scores[len(inputs) - n:len(inputs)])
            logprobs = _log_softmax_rows(np, rows)
            target = np.asarray(whole[-n:])
            picked = logprobs[np.arange(n), target]
            return float(picked.sum()), bool((logprobs.argmax(axis=-1) == target).all())

        def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> list[Any]:
            out = []
            for cache_key, context, continuation in tqdm(requests, disable=disable_tqdm,
                                                          desc="llama.cpp loglikelihood"):
                if not continuation:
                    raise InvalidArtifactError(f"an empty continuation cannot be scored (request {cache_key!r})")
                answer = self._score(list(context), list(continuation))
                out.append(answer)
                if cache_key is not None:
                    self.cache_hook.add_partial("loglikelihood", cache_key, answer)
            return out

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            out = []
            for (string,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="llama.cpp rolling"):
                windows = utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.n_ctx, context_len=1)
                total = 0.0
                for window in map(utils.make_disjoint_window, windows):
                    total += self._score(list(window[0]), list(window[1]))[0]
                out.append(total)
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            return out

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            out = []
            for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm,
                                            desc="llama.cpp generate"):
                kwargs = dict(gen_kwargs)
                until = kwargs.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                max_tokens = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
                prompt = self.tok_encode(context)[-(self.n_ctx - max_tokens):]
                completion = self.llm.create_completion(prompt, max_tokens=max_tokens, stop=until or None,
                                                        temperature=0.0, top_k=1)
                text = completion["choices"][0]["text"]
                out.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            return out

    LlamaCppLM.__name__ = LlamaCppLM.__qualname__ = "LlamaCppLM"
    if MODEL_NAME not in registry.MODEL_REGISTRY:
        registry.register_model(MODEL_NAME)(LlamaCppLM)
    return registry.get_model(MODEL_NAME)


def llama_cpp_lm(path: str | Path, *, n_ctx: int = 2048, n_threads: int = 0) -> Any:
    """A harness ``LM`` over a GGUF file (the class registered as ``aptops-llama-cpp``)."""
    return _harness_lm_class()(str(path), n_ctx=n_ctx, n_threads=n_threads)
