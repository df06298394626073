"""A multiple-choice task built from data that ships with the machine: WordNet's definitions of common nouns.

``wordnet_words``: "Definition: <gloss>. Word:" with four single-word choices, the right word and three nouns of
the same WordNet lexicographer file (animals with animals, artifacts with artifacts), so the answer needs the
word's meaning, not its topic. Its metric is ``acc`` (choices are single words: length normalisation, ``acc_norm``,
would only add noise). The nouns are the most used ones of Debian's ``wordnet-base`` (by the sense counts of
its ``cntlist.rev``, from the Brown-corpus tagging of SemCor), in their first sense. Chance is 0.25; a model that
knew English words and forgot them in fine-tuning shows it here, which perplexity on the fine-tuning text does not.

:func:`build_wordnet_task` writes the task YAML (lm-evaluation-harness format) and its JSONL data into a folder
that ``aptops eval run --include-path`` (or the harness itself, run from that folder) reads.

``word_analogies`` (written beside it when a Mikolov et al. 2013 ``questions-words.txt`` is given; gensim ships one
in its test data): "Athens is to Greece as Baghdad is to" with four choices, the right word and three answers of
other questions of the same relation (capitals with capitals, plurals with plurals), questions taken in turn from
each of the 14 relations. It tests other knowledge than the definitions (geography, currencies, family words and
English morphology), so a compression tuned on ``wordnet_words`` is also judged on a task it was not tuned on.
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


ANALOGY_TASK = "word_analogies"
ANALOGY_YAML = TASK_YAML.replace(TASK_NAME, ANALOGY_TASK).replace(
    "from WordNet's definitions of common nouns (Debian wordnet-base)",
    "from the word analogies of Mikolov et al. 2013 (questions-words.txt)").replace(
    "Definition: {{definition}}.\\nWord:", "{{a}} is to {{b}} as {{c}} is to")


def analogy_rows(source: str | Path, questions: int, seed: int = 0) -> list[dict[str, object]]:
    """``questions`` analogy questions, taken in turn from each relation of a ``questions-words.txt``."""
    path = Path(source)
    if not path.is_file():
        raise ArtifactNotFoundError(f"the analogy questions {str(path)!r} are missing: give a questions-words.txt "
                                    "(gensim ships one: gensim.test.utils.datapath('questions-words.txt'))",
                                    path=str(path))
    relations: dict[str, list[list[str]]] = {}
    current = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(":"):
            current = line[1:].strip()
            relations[current] = []
        elif current is not None and len(words := line.split()) == 4:
            relations[current].append(words)
    relations = {k: v for k, v in relations.items() if len({q[3] for q in v}) > CHOICES}
    if not relations:
        raise InvalidArtifactError(f"{str(path)!r} holds no relation with more than {CHOICES} answers: is it a "
                                   "questions-words.txt (': relation' lines, then 'a b c d' lines)?")
    rng = random.Random(seed)
    names = sorted(relations)
    order = {name: rng.sample(relations[name], len(relations[name])) for name in names}
    rows: list[dict[str, object]] = []
    for i in range(max(len(v) for v in order.values()) * len(names)):
        name = names[i % len(names)]
        if i // len(names) >= len(order[name]):
            continue
        a, b, c, d = order[name][i // len(names)]
        pool = sorted({q[3] for q in relations[name]} - {a, b, c, d})
        choices = [d, *rng.sample(pool, CHOICES - 1)]
        rng.shuffle(choices)
        rows.append({"a": a, "b": b, "c": c, "choices": choices, "answer": choices.index(d), "relation": name})
        if len(rows) == questions:
            return rows
    raise InvalidArtifactError(f"only {len(rows)} analogy questions in {str(path)!r} for {questions}: ask fewer")


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
                       wordnet_dir: str | Path | None = None, analogies: str | Path | None = None) -> StageResult:
    """Write ``wordnet_words.yaml`` and ``wordnet_words.jsonl`` into ``out_dir`` (atomically).

    Args:
        questions: how many definitions to ask (the most used nouns that qualify, shuffled by ``seed``).
        min_count: least SemCor sense count of a noun to be asked or offered as a choice.
        wordnet_dir: WordNet's database files (Debian's ``wordnet-base`` by default).
        analogies: a ``questions-words.txt``: also write the ``word_analogies`` task (``questions`` of them).

    Raises:
        ArtifactNotFoundError: WordNet or the analogies file is missing.
        InvalidArtifactError: too few nouns or analogies qualify.
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
    tasks = {TASK_NAME: (TASK_YAML, rows)}
    if analogies is not None:
        tasks[ANALOGY_TASK] = (ANALOGY_YAML, analogy_rows(analogies, questions, seed))
    result = StageResult("eval", outputs={"tasks": str(out_dir), "task": ",".join(tasks)},
                         metrics={"questions": float(len(rows)), "chance": 1.0 / CHOICES},
                         details={"source": str(folder), "min_count": min_count, "seed": seed,
                                  "analogies": str(analogies) if analogies is not None else None})
    with atomic_output(out_dir) as tmp:
        for name, (yaml_text, task_rows) in tasks.items():
            (tmp / f"{name}.yaml").write_text(yaml_text, encoding="utf-8")
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in task_rows),
                                               encoding="utf-8")
        finish_artifact(tmp, result)
    return result
