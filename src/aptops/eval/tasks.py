"""A multiple-choice task built from data that ships with the machine: WordNet's definitions of common nouns.

``wordnet_words``: "Definition: <gloss>. Word:" with four single-word choices, the right word and three nouns of
the same WordNet lexicographer file (animals with animals, artifacts with artifacts), so the answer needs the
word's meaning, not its topic. Its metric is ``acc`` (choices are single words: length normalisation, ``acc_norm``,
would only add noise). The nouns are the most used ones of Debian's ``wordnet-base`` (by the sense counts of
its ``cntlist.rev``, from the Brown-corpus tagging of SemCor), in their first sense. Chance is 0.25; a model that
knew English words and forgot them in fine-tuning shows it here, which perplexity on the fine-tuning text does not.

:func:`build_wordnet_task` writes the task YAML (lm-evaluation-harness format) and its JSONL data into a folder
that ``aptops eval run --include-path`` (or the harness itself, run from that folder) reads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from aptops.core.artifacts import StageResult, atomic_output, finish_artifact
from aptops.core.config import check_range
from aptops.core.errors import ArtifactNotFoundError, InvalidArtifactError

TASK_NAME = "wordnet_words"
DATA_FILE = f"{TASK_NAME}.jsonl"
CHOICES = 4

# kept as literal text: the harness reads it, and the data file is named relative to the folder
TASK_YAML = f"""\
# Built by aptops (aptops eval wordnet-task) from WordNet's definitions of common nouns (Debian wordnet-base).
task: {TASK_NAME}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA_FILE}
test_split: test
output_type: multiple_choice
doc_to_text: "Definition: {{{{definition}}}}.\\nWord:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _common_nouns(wordnet_dir: Path, min_count: int) -> list[tuple[str, str, int]]:
    """``(word, sense key, count)`` of single-word nouns in their first sense, most used first."""
    cntlist = wordnet_dir / "cntlist.rev"
    if not cntlist.is_file():
        raise ArtifactNotFoundError(f"WordNet's sense counts {str(cntlist)!r} are missing: apt-get install "
                                    "wordnet-base (make setup does it)", path=str(cntlist))
    out = []
    for line in cntlist.read_text(encoding="utf-8").splitlines():
        key, sense, count = line.split()
        lemma, _, rest = key.partition("%")
        if rest.startswith("1:") and sense == "1" and int(count) >= min_count and lemma.isalpha() and lemma.islower():
            out.append((lemma, key, int(count)))
    return sorted(out, key=lambda t: (-t[2], t[0]))


def build_wordnet_task(out_dir: str | Path, *, questions: int = 100, min_count: int = 15, seed: int = 0,
                       wordnet_dir: str | Path | None = None) -> StageResult:
    """Write ``wordnet_words.yaml`` and ``wordnet_words.jsonl`` into ``out_dir`` (atomically).

    Args:
        questions: how many definitions to ask (the most used nouns that qualify, shuffled by ``seed``).
        min_count: least SemCor sense count of a noun to be asked or offered as a choice.
        wordnet_dir: WordNet's database files (Debian's ``wordnet-base`` by default).

    Raises:
        ArtifactNotFoundError: WordNet is not installed.
        InvalidArtifactError: too few nouns qualify.
    """
    from aptops.core.assets import WORDNET_DIR, wordnet

    check_range("questions", questions, min_value=1)
    folder = Path(wordnet_dir or WORDNET_DIR)
    nouns = _common_nouns(folder, min_count)
    wn = wordnet(str(folder))
    by_lexfile: dict[str, list[str]] = {}
    entries = []
    for word, _, _ in nouns:
        senses = wn.synsets(word, pos="n")
        if not senses:
            continue
        synset = senses[0]  # WordNet orders a word's senses by use: its first is the counted one
        definition = synset.definition().strip()
        names = {n.lower() for n in synset.lemma_names()}
        if word in definition.lower().split() or len(definition) < 12:
            continue  # a definition that says its word gives the answer away
        lexfile = synset.lexname()
        by_lexfile.setdefault(lexfile, []).append(word)
        entries.append({"word": word, "definition": definition, "lexfile": lexfile, "synonyms": sorted(names)})
    rng = random.Random(seed)
    rng.shuffle(entries)
    rows = []
    for entry in entries:
        pool = [w for w in by_lexfile[entry["lexfile"]] if w not in entry["synonyms"] and w != entry["word"]]
        if len(pool) < CHOICES - 1:
            continue
        choices = [entry["word"], *rng.sample(pool, CHOICES - 1)]
        rng.shuffle(choices)
        rows.append({"definition": entry["definition"], "choices": choices, "answer": choices.index(entry["word"]),
                     "word": entry["word"], "lexfile": entry["lexfile"]})
        if len(rows) == questions:
            break
    if len(rows) < questions:
        raise InvalidArtifactError(f"only {len(rows)} WordNet nouns qualify for {questions} questions: lower "
                                   f"min_count ({min_count}) or ask fewer questions")
    result = StageResult("eval", outputs={"tasks": str(out_dir), "task": TASK_NAME},
                         metrics={"questions": float(len(rows)), "chance": 1.0 / CHOICES},
                         details={"source": str(folder), "min_count": min_count, "seed": seed})
    with atomic_output(out_dir) as tmp:
        (tmp / f"{TASK_NAME}.yaml").write_text(TASK_YAML, encoding="utf-8")
        (tmp / DATA_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        finish_artifact(tmp, result)
    return result
