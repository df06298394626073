"""The eval stage against lm-evaluation-harness itself: the same numbers as the harness run directly, a GGUF of the
same model within tolerance, every request type on llama.cpp, and clear errors for what a user gets wrong."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.cli import aptops
from tests.tasks import write_tiny_tasks

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    """A folder of task YAML files of one's own with their data beside them (named relative to the folder)."""
    return write_tiny_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    from aptops.lm.gguf import convert_to_gguf

    return convert_to_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", outtype="F32")


def _values(results: dict) -> dict:
    return {f"{task} {k}": v for task, m in results.items() for k, v in m.items() if isinstance(v, float)}


def test_aptops_eval_run_gives_the_numbers_of_the_harness_run_directly(tiny_llama, tasks, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = tmp_path / "eval"
    proc = aptops("eval", "run", str(tiny_llama), "--tasks", "tiny_mc,tiny_text", "--include-path", str(tasks),
                  "--device", "cpu", "--batch-size", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    mine = json.loads((out / "results.json").read_text())
    assert mine["n-samples"]["tiny_mc"] == {"original": 24, "effective": 24}
    assert "tiny_mc" in mine["configs"] and mine["versions"]["tiny_mc"] == 1.0
    assert "tiny_mc" in proc.stdout and "acc_norm" in proc.stdout  # the table shows each task's headline
    page = (out / "report.html").read_text()
    assert "tiny_text" in page and "data:image/png;base64," in page

    monkeypatch.chdir(tasks)  # the harness resolves the tasks' relative data files against the working directory
    direct = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama}", tasks=["tiny_mc", "tiny_text"],
                                     task_manager=TaskManager(include_path=str(tasks)), device="cpu", batch_size=4)
    assert _values(mine["results"]) == pytest.approx(_values(direct["results"]), rel=1e-6)
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    assert metrics["tiny_mc_acc"] == direct["results"]["tiny_mc"]["acc,none"]
    assert metrics["tiny_text_word_perplexity"] == pytest.approx(direct["results"]["tiny_text"]["word_perplexity,none"])


def test_a_gguf_of_the_same_model_gives_the_same_answers_on_llama_cpp(tiny_llama, tiny_gguf, tasks, tmp_path):
    """Every request type through llama.cpp: multiple choice (loglikelihood), rolling perplexity and generation;
    an F32 GGUF is the same function as its source, so the numbers agree within float rounding."""
    from aptops.eval import HarnessConfig, evaluate_tasks

    config = HarnessConfig(tasks=("tiny_mc", "tiny_text", "tiny_gen"), include_path=str(tasks), device="cpu")
    hf = evaluate_tasks(tiny_llama, output_dir=tmp_path / "hf", config=config)
    gguf = evaluate_tasks(tiny_gguf, output_dir=tmp_path / "gguf", config=config)
    assert gguf.details["model_kind"] == "gguf" and hf.details["model_kind"] == "hf"
    assert gguf.metrics["tiny_mc_acc"] == hf.metrics["tiny_mc_acc"]
    assert gguf.metrics["tiny_mc_acc_norm"] == hf.metrics["tiny_mc_acc_norm"]
    assert gguf.metrics["tiny_text_word_perplexity"] == pytest.approx(hf.metrics["tiny_text_word_perplexity"], rel=1e-3)
    assert gguf.metrics["tiny_gen_exact_match"] == hf.metrics["tiny_gen_exact_match"]
    # the choices of one question share its context: llama.cpp evaluated it once
    assert gguf.details["llama_cpp"]["reused_prefix_tokens"] > 0
    assert math.isfinite(gguf.metrics["tiny_text_bits_per_byte"])


def test_a_quantized_gguf_stays_close(tiny_llama, tasks, tmp_path):
    from aptops.eval import HarnessConfig, evaluate_tasks
    from aptops.lm.gguf import convert_to_gguf, quantize_gguf

    f16 = convert_to_gguf(tiny_llama, tmp_path / "tiny-f16.gguf", outtype="F16")
    q8 = quantize_gguf(f16, tmp_path / "tiny-q8_0.gguf", "Q8_0")
    config = HarnessConfig(tasks=("tiny_text",), include_path=str(tasks))
    source = evaluate_tasks(tiny_llama, output_dir=tmp_path / "hf", config=config).metrics
    quant = evaluate_tasks(q8, output_dir=tmp_path / "q8", config=config).metrics
    assert quant["tiny_text_word_perplexity"] == pytest.approx(source["tiny_text_word_perplexity"], rel=0.02)


def test_an_unknown_task_is_named_with_close_names_and_nothing_is_written(tiny_llama, tasks, tmp_path):
    out = tmp_path / "eval"
    proc = aptops("eval", "run", str(tiny_llama), "--tasks", "tiny_mcq", "--include-path", str(tasks), "--out", str(out))
    assert proc.returncode == 2
    assert "unknown task 'tiny_mcq'" in proc.stderr and "tiny_mc" in proc.stderr
    assert not out.exists()
    proc = aptops("eval", "run", str(tiny_llama), "--out", str(out))
    assert proc.returncode == 2 and "no task to evaluate" in proc.stderr


def test_a_task_file_that_does_not_parse_is_named(tiny_llama, tasks, tmp_path):
    import shutil

    broken = tmp_path / "tasks"
    shutil.copytree(tasks, broken)
    (broken / "oops.yaml").write_text("task: oops\ndoc_to_text: [unclosed\n")
    out = tmp_path / "eval"
    proc = aptops("eval", "run", str(tiny_llama), "--tasks", "tiny_mc", "--include-path", str(broken), "--out", str(out))
    assert proc.returncode == 2
    assert "oops.yaml" in proc.stderr and "does not parse" in proc.stderr
    assert not out.exists()


def test_a_model_that_does_not_load_is_named(tasks, tmp_path):
    out = tmp_path / "eval"
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    proc = aptops("eval", "run", str(not_a_model), "--tasks", "tiny_mc", "--include-path", str(tasks), "--out", str(out))
    assert proc.returncode == 1 and "no config.json" in proc.stderr and str(not_a_model) in proc.stderr
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 10)
    proc = aptops("eval", "run", str(truncated), "--tasks", "tiny_mc", "--include-path", str(tasks), "--out", str(out))
    assert proc.returncode == 1 and "cut.gguf" in proc.stderr and "GGUF" in proc.stderr
    assert not out.exists()


def test_the_wordnet_task_asks_real_definitions_with_one_right_word(tmp_path):
    from aptops.eval.tasks import TASK_NAME, build_wordnet_task

    result = build_wordnet_task(tmp_path / "tasks", questions=60, seed=3)
    rows = [json.loads(line) for line in (tmp_path / "tasks" / f"{TASK_NAME}.jsonl").read_text().splitlines()]
    assert len(rows) == 60 == result.metrics["questions"] and result.metrics["chance"] == 0.25
    for row in rows:
        assert len(set(row["choices"])) == 4 and row["choices"][row["answer"]] == row["word"]
        assert row["word"] not in row["definition"].lower().split()
    assert len({r["lexfile"] for r in rows}) > 5  # animals, artifacts, people ...: not one topic
    assert sum(r["answer"] == 0 for r in rows) < 30  # the right answer's place is shuffled
    again = build_wordnet_task(tmp_path / "again", questions=60, seed=3)
    assert (Path(again.outputs["tasks"]) / f"{TASK_NAME}.jsonl").read_text() == (tmp_path / "tasks" / f"{TASK_NAME}.jsonl").read_text()


def test_the_analogy_task_takes_each_relation_in_turn_and_the_harness_runs_it(tiny_llama, tmp_path):
    """Written beside wordnet_words from a questions-words.txt (gensim's, a real one); the harness reads both."""
    from gensim.test.utils import datapath

    from aptops.eval.tasks import ANALOGY_TASK

    tasks = tmp_path / "tasks"
    proc = aptops("eval", "wordnet-task", str(tasks), "--questions", "28", "--analogies", datapath("questions-words.txt"))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tasks / f"{ANALOGY_TASK}.jsonl").read_text().splitlines()]
    assert len(rows) == 28 and len({r["relation"] for r in rows}) == 14  # two of each of the 14 relations
    for row in rows:
        right = row["choices"][row["answer"]]
        assert len(set(row["choices"])) == 4 and right not in (row["a"], row["b"], row["c"])
    capital = next(r for r in rows if r["relation"] == "capital-common-countries")
    assert capital["choices"][capital["answer"]][0].isupper()
    out = tmp_path / "judged"
    proc = aptops("eval", "run", str(tiny_llama), "--tasks", f"wordnet_words,{ANALOGY_TASK}", "--include-path",
                  str(tasks), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())["results"]
    assert results[ANALOGY_TASK]["acc,none"] >= 0 and results["wordnet_words"]["acc,none"] >= 0
    assert json.loads((out / "results.json").read_text())["n-samples"][ANALOGY_TASK]["effective"] == 28
    bad = tmp_path / "q.txt"
    bad.write_text(": only-three\nA B C D\nE F G H\nI J K L\n")
    proc = aptops("eval", "wordnet-task", str(tmp_path / "never"), "--analogies", str(bad))
    assert proc.returncode != 0 and "no relation with more than 4 answers" in proc.stderr
    assert not (tmp_path / "never").exists()
