"""The bad-input battery: every CLI command fed missing, empty, truncated and wrong-format files, wrong columns,
bad URIs, invalid numbers and things that are not models.

Each case must exit non-zero, print one message that names the problem (matched below) without a traceback,
and leave no finished output behind (no ``result.json`` under ``--out``). ``test_cases_per_stage`` prints
how many cases each stage has.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.cli import aptops

# (stage, arguments with {placeholders}, what the message must say)
CASES: list[tuple[str, str, str]] = [
    ("data", "data clean {missing} --out {out}", "does not exist"),
    ("data", "data clean {empty} --out {out}", "could not be read as jsonl"),
    ("data", "data clean {garbage} --out {out}", "looks binary"),
    ("data", "data clean {truncated} --out {out}", "magic bytes"),
    ("data", "data clean {wrongcol} --out {out}", "has no column 'text'"),
    ("data", "data clean {ok} --out {out} --set min_chars=abc", "min_chars must be an integer"),
    ("data", "data clean {ok} --out {out} --set strategy=nuclear", "choose one of basic"),
    ("data", "data dedup {garbage} --out {out}", "is a file, not an aptops dataset folder"),
    ("data", "data dedup {ok} --out {out} --set threshold=2", r"threshold=2.0 is out of range"),
    ("data", "data quality {ok} --out {out} --set checks=[spelling]", "'spelling' is not supported"),
    ("data", "data balance {ok} --out {out}", "aptops data clean FILE"),
    ("data", "data process {truncated} --out {out}", "magic bytes"),
    ("data", "data process {ok} --out {out} --set steps=[clean,teleport]", "'teleport' is not supported"),
    ("train", "train run {notamodel} {ok} --out {out}", "not a Hugging Face model folder"),
    ("train", "train run nope {ok} --out {out}", "has no namespace"),
    ("train", "train run {tiny} {wrongcol} --out {out}", "no column 'text'"),
    ("train", "train run {tiny} {ok} --out {out} --set block_size=-3", r"block_size=-3 is out of range"),
    ("train", "train run {pickled} {ok} --out {out}", "safetensors|pickled"),
    ("train", "train run {tiny} {ok} --out {out} --set training_args.per_device_train_batch_size=-1",
     r"training_args.per_device_train_batch_size=-1 is out of range: allowed \[1, 65536\]"),
    ("train", "train run {tiny} {ok} --out {out} --set training_args.learning_rate=nan",
     "training_args.learning_rate=nan must be a finite number"),
    ("train", "train run {tiny} {ok} --out {out} --set training_args.max_steps=1000000000000",
     r"training_args.max_steps=1000000000000 is out of range"),
    ("train", "train run {tiny} {ok} --out {out} --set training_args.lerning_rate=1e-4",
     "training_args.lerning_rate is not a TrainingArguments field; did you mean 'learning_rate'"),
    ("debug", "debug run {notamodel} {ok} --out {out}", "not a Hugging Face model folder"),
    ("debug", "debug profile {notamodel}", "not a Hugging Face model folder"),
    ("debug", "debug profile {tiny} --seq-len 0", "must be positive whole numbers"),
    ("distill", "distill run {notamodel} {ok} --out {out}", "not a Hugging Face model folder"),
    ("distill", "distill run {tiny} {ok} --out {out} --set objective.temperature=-1", "temperature=-1.0 is out of range"),
    ("distill", "distill run {tiny} {ok} --out {out} --set objective.strategies.teleport=1", "'teleport' is not supported"),
    ("distill", "distill evaluate {notamodel} {tiny} {ok} --out {out}", "not a Hugging Face model folder"),
    ("distill", "distill run {tiny} {ok} --out {out} --set training.training_args.learning_rate=inf",
     "training_args.learning_rate=inf must be a finite number"),
    ("distill", "distill run {tiny} {ok} --out {out} --set training.training_args.gradient_accumulation_steps=0",
     r"training_args.gradient_accumulation_steps=0 is out of range"),
    ("prune", "prune run {notamodel} {ok} --out {out}", "not a Hugging Face model folder"),
    ("prune", "prune run {tiny} {ok} --out {out} --set target_sparsity=1.5", "target_sparsity=1.5 is out of range"),
    ("prune", "prune run {tiny} {ok} --out {out} --set method=random", "'random' is not supported"),
    ("prune", "prune run {tiny} {ok} --out {out} --set recovery_steps=5 --set training.training_args.warmup_steps=-5",
     r"training_args.warmup_steps=-5 is out of range"),
    ("export", "export gguf {notamodel} --out {out}", "not a Hugging Face model folder"),
    ("export", "export gguf {tiny} --out {out} --set quantization=Q9_9", "'Q9_9' is not supported"),
    ("export", "export ollama {missing_gguf} --name x", "does not exist"),
    ("multimodal", "multimodal train {missing} --out {out}", "does not exist"),
    ("multimodal", "multimodal train {mm_nomodality} --out {out}", "row 0 has no text, image or audio"),
    ("multimodal", "multimodal train {mm_missing_file} --out {out} --set eval_fraction=0",
     r"row 0 \(r0\): the image .*missing.png does not exist"),
    ("multimodal", "multimodal train {mm_missing_file} --out {out} --set fusion=sum", "'sum' is not supported"),
    ("multimodal", "multimodal predict {notamodel} --text hi", "not an aptops multimodal model"),
    ("multimodal", "multimodal train {mm_missing_file} --out {out} --set training_args.per_device_train_batch_size=-1",
     r"training_args.per_device_train_batch_size=-1 is out of range"),
    ("multimodal", "multimodal sample {out} --classes 20", "between 2 and 8"),
    ("backup", "backup {notamodel} --to ftp://host/x", "unsupported scheme 'ftp'"),
    ("backup", "backup {missing} --to s3://bucket/x", "does not exist"),
    ("backup", "backup {notamodel} --to s3://", "has no bucket"),
    ("backup", "restore oss:/bad --out {out}", "URI with one slash"),
    ("hub", "hub import nope --out {out}", "has no namespace"),
    ("pipelines", "compile --pipeline nope --out {out}", "unknown pipeline 'nope'"),
    ("pipelines", "compile --gpu-toleration bad --out {out}", "must look like key=value:Effect"),
    ("pipelines", "compile --cache-pvc Bad_Name --out {out}", "not a valid Kubernetes name"),
    ("pipelines", "run nope --local --runs-dir {out}", "unknown pipeline 'nope'"),
    ("pipelines", "run data --local --param source=/opt/python3/x --runs-dir {out}", "kfp.local rewrites"),
    ("pipelines", "register --host http://127.0.0.1:9 --pipeline nope", "unknown pipeline"),
    ("pipelines", "doctor", "nothing to check"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_llama):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.jsonl").write_bytes(b"")
    (d / "garbage.jsonl").write_bytes(bytes(range(256)) * 2)
    (d / "wrongcol.jsonl").write_text(json.dumps({"body": "no text column here"}) + "\n")
    (d / "ok.jsonl").write_text(json.dumps({"text": "one fine row of text"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a row of text"] * 500}), d / "full.parquet")
    data = (d / "full.parquet").read_bytes()
    (d / "truncated.parquet").write_bytes(data[: len(data) // 2])
    (d / "notamodel").mkdir()
    (d / "notamodel" / "README.md").write_text("not a model")
    pickled = d / "pickled"
    pickled.mkdir()
    for f in Path(tiny_llama).iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 pickled weights are never loaded")
    (d / "mm_nomodality.jsonl").write_text(json.dumps({"label": "a"}) + "\n")
    (d / "mm_missing_file.jsonl").write_text(
        json.dumps({"id": "r0", "image": "missing.png", "label": "a"}) + "\n"
        + json.dumps({"id": "r1", "image": "missing2.png", "label": "b"}) + "\n")
    return {"missing": d / "nope.jsonl", "empty": d / "empty.jsonl", "garbage": d / "garbage.jsonl",
            "truncated": d / "truncated.parquet", "wrongcol": d / "wrongcol.jsonl", "ok": d / "ok.jsonl",
            "notamodel": d / "notamodel", "pickled": pickled, "tiny": tiny_llama,
            "missing_gguf": d / "nope.gguf", "mm_nomodality": d / "mm_nomodality.jsonl",
            "mm_missing_file": d / "mm_missing_file.jsonl"}


@pytest.fixture(scope="module")
def battery(inputs, tmp_path_factory):
    """Every case run once, as a user runs it (the installed command, a process each), three at a time: most of a
    case is the interpreter starting and importing, which two cores can do side by side. ``{index: (run, its
    folder)}``; each case's own test then judges its run."""
    from concurrent.futures import ThreadPoolExecutor

    def run(index: int) -> tuple[object, Path]:
        where = tmp_path_factory.mktemp(f"case{index}")
        args = [a.format(out=where / "out", **inputs) for a in CASES[index][1].split()]
        return aptops(*args, cwd=where, env={"APTOPS_NO_PROGRESS": "1"}), where

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(range(len(CASES)), pool.map(run, range(len(CASES))), strict=True))


@pytest.mark.parametrize(("index", "stage", "command", "message"), [(i, *c) for i, c in enumerate(CASES)],
                         ids=[f"{s}:{c.split(' {')[0]}:{i}" for i, (s, c, _m) in enumerate(CASES)])
def test_bad_input_is_refused_clearly(index, stage, command, message, battery):
    run, tmp_path = battery[index]
    out = tmp_path / "out"
    text = " ".join((run.stderr + run.stdout).split())
    assert run.returncode != 0, text[-2000:]
    import re

    assert re.search(message, text), (message, text[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert not list(tmp_path.rglob("result.json")), "a refused run left a finished artifact behind"
    if "training_args" in command:  # checked before any work: no output folder, no empty checkpoints/
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def test_cases_per_stage():
    counts = Counter(stage for stage, _c, _m in CASES)
    print("\nbad-input cases per stage: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
          + f" (total {len(CASES)})")
    stages = {"data", "train", "debug", "distill", "prune", "export", "multimodal", "backup", "hub", "pipelines"}
    assert set(counts) == stages and min(counts.values()) >= 1 and len(CASES) >= 45
