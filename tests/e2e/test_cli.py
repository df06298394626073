"""The ``aptops`` command as a user runs it (a subprocess of the installed console script)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.cli import aptops, aptops_all


def test_help_and_version():
    out = aptops("--help")
    assert out.returncode == 0
    for cmd in ("stages", "run", "compile", "submit", "data"):
        assert cmd in out.stdout
    assert aptops("--version").stdout.strip() == "aptops 0.1.0"


def test_stages_table_lists_every_stage_with_its_old_plugin():
    out = aptops("stages")
    assert out.returncode == 0
    rows = {cells[0]: cells for line in out.stdout.splitlines() if line.count("│") > 3
            for cells in [[c.strip() for c in line.split("│")[1:-1]]]}
    assert rows["data"] == ["data", "data_processors", "data", "100", "aptops-data", "cpu", "5"]
    assert rows["export"] == ["export", "ollama_export", "export", "900", "aptops-export", "cpu", "4"]
    assert rows["debug"][1:4] == ["advanced_debugging", "debug", "800"] and rows["debug"][6] == "14"
    assert rows["train"][1] == rows["hub"][1] == "huggingface_integration" and rows["train"][5] == "gpu"
    assert sum(int(r[6]) for r in rows.values() if r[1] != "-") == 53
    assert rows["eval"][1:3] == ["-", "evaluation"] and rows["eval"][5] == "gpu"  # a stage no old plugin had
    assert "partial" not in out.stdout and "planned" not in out.stdout


def test_data_clean_cli_and_bad_input(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a  b"}\n')
    ok = aptops("data", "clean", str(src), "--out", str(tmp_path / "out"), "--set", "min_chars=1")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "result.json").exists()
    bad = aptops("data", "clean", str(src), "--out", str(tmp_path / "out2"), "--set", "min_chars=lots")
    assert bad.returncode == 2
    assert "min_chars must be an integer, got 'lots'" in bad.stderr
    assert not (tmp_path / "out2").exists()
    missing = aptops("data", "clean", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out3"))
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def _platform_spec(path: Path) -> dict:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "expected the pipeline spec and its Kubernetes platform spec"
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_compile_writes_node_selector_and_images(tmp_path):
    out = aptops(
        "compile", "--out", str(tmp_path), "--image-registry", "registry.example.com/ml", "--image-tag", "v1.2",
        "--cpu-node-selector", "pool=cpu-small", "--cpu-node-selector", "example.com/tier=batch",
    )
    assert out.returncode == 0, out.stderr
    path = tmp_path / "data.yaml"
    executors = _platform_spec(path)
    for name in ("exec-clean-text", "exec-dataset-stats"):
        assert executors[name]["nodeSelector"]["labels"] == {"pool": "cpu-small", "example.com/tier": "batch"}
    spec = next(yaml.safe_load_all(path.read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/ml/aptops-data:v1.2"}
    assert spec["root"]["inputDefinitions"]["parameters"]["source"]["description"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu-toleration", "nvidia.com/gpu"], "must look like key=value:Effect"),
        (["--gpu-toleration", "gpu=true:Sometimes"], "effect 'Sometimes' must be one of"),
        (["--cpu-node-selector", "pool"], "must look like key=value"),
        (["--image-registry", "Bad Registry"], "not a valid registry"),
        (["--pipeline", "nope"], "unknown pipeline 'nope'"),
    ],
)
def test_compile_bad_options(tmp_path, args, message):
    out = aptops("compile", "--out", str(tmp_path), *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert not list(tmp_path.glob("*.yaml"))


def test_run_rejects_unknown_and_mistyped_params(tmp_path):
    out = aptops("run", "data", "--local", "--param", "sauce=x", "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "has no parameter 'sauce'" in out.stderr
    out = aptops("run", "data", "--local", "--param", "min_chars=many", "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "min_chars='many' must be of type Integer" in out.stderr


@pytest.mark.slow
def test_run_data_local_produces_cleaned_dataset(tmp_path, assets):
    out = aptops(
        "run", "data", "--local", "--param", f"source={assets / 'messy.txt'}", "--param", "separator=",
        "--runs-dir", str(tmp_path), cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = tmp_path.glob("data-*")
    (merged,) = [p for p in run_dir.rglob("merge-shards/dataset") if (p / "result.json").exists()]
    import pyarrow.parquet as pq

    texts = pq.read_table(merged / "part-00000.parquet").column("text").to_pylist()
    assert len(texts) == 9  # 10 lines, one blank
    assert all("http" not in t and "@example.com" not in t for t in texts)
    assert "The café's déjà vu" in texts or "The café’s déjà vu" in texts
    reports = list(run_dir.rglob("report"))
    assert reports and "<svg" in reports[0].read_text()
    assert "  ✓ clean-text " in out.stdout and "rows_out" in out.stdout and "executor_input" not in out.stdout
    assert (run_dir / "report.html").is_file() and (run_dir / "logs" / "clean-text.log").is_file()
    assert (run_dir / "metrics" / "clean.prom").exists()


def test_a_failed_task_shows_the_end_of_its_log_and_where_the_log_is(tmp_path):
    out = aptops("run", "data", "--local", "--param", f"source={tmp_path / 'missing.txt'}", "--runs-dir", str(tmp_path),
                 cwd=tmp_path)
    assert out.returncode == 1
    (log,) = tmp_path.glob("data-*/logs/clean-text.log")
    assert "  ✗ clean-text " in out.stdout and str(log) in out.stdout
    assert "missing.txt' does not exist" in out.stdout.splitlines()[-1]  # the error itself, last
    assert str(log) in " ".join(out.stderr.split()) and "does not exist" in log.read_text()


def test_run_reads_params_from_a_config_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("params:\n  min_chars: not-a-number\n")
    out = aptops("run", "data", "--local", "--config", str(cfg), "--runs-dir", str(tmp_path))
    assert out.returncode == 2
    assert "min_chars='not-a-number' must be of type Integer" in out.stderr
    cfg.write_text("- just\n- a list\n")
    out = aptops("run", "data", "--local", "--config", str(cfg), "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "must hold a mapping" in out.stderr


def test_dockerignore_keeps_the_build_context_small():
    root = Path(__file__).resolve().parents[2]
    lines = (root / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*", "everything is excluded by default"
    for dockerfile in root.glob("images/**/Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:  # a stage's files, not the context's
                for src in line.split()[1:-1]:
                    assert f"!{src.rstrip('/')}" in {x.rstrip("/") for x in lines}, f"{src} is COPYed but ignored"


def test_data_process_and_balance_cli(tmp_path):
    import json

    rows = [{"text": f"record number {i} about food and cooking", "label": "food"} for i in range(12)]
    rows += [{"text": f"record number {i} about pets and animals", "label": "pets"} for i in range(3)]
    src = tmp_path / "raw.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = aptops("data", "process", str(src), "--out", str(tmp_path / "p"), "--set", "steps=[clean]")
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout
    bal = aptops("data", "balance", str(tmp_path / "p"), "--out", str(tmp_path / "b"), "--set", "method=undersample")
    assert bal.returncode == 0, bal.stderr
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert stats["before"] == {"food": 12, "pets": 3} and stats["after"] == {"food": 3, "pets": 3}
    bad = aptops("data", "balance", str(tmp_path / "p"), "--out", str(tmp_path / "c"), "--set", "label_column=kind")
    assert bad.returncode == 1 and "no column 'kind'" in bad.stderr and not (tmp_path / "c").exists()


def test_debug_cli_reports_and_refuses_bad_input(tiny_llama, tmp_path):
    import json

    from tests.models import CORPUS

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 2))
    out = tmp_path / "report"
    done = aptops("debug", "run", str(tiny_llama), str(corpus), "--out", str(out), "--set", "block_size=32",
                  "--set", "steps=4", env={"APTOPS_NO_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "forward_flops" in done.stdout and (out / "report.pdf").is_file()
    prof = aptops("debug", "profile", str(tiny_llama), "--seq-len", "16", "--top", "3")
    assert prof.returncode == 0 and "analytic_flops" in prof.stdout
    cases = [
        (("debug", "run", str(tmp_path / "nope"), str(corpus), "--out", str(tmp_path / "r1")), "does not exist"),
        (("debug", "run", str(tiny_llama), str(corpus), "--out", str(tmp_path / "r2"), "--set", "steps=-1"), "steps"),
        (("debug", "run", str(tiny_llama), str(corpus), "--out", str(tmp_path / "r3"), "--set", "text_column=body"),
         "no column 'body'"),
        (("debug", "profile", str(tiny_llama), "--seq-len", "0"), "input_shape"),
    ]
    for (args, message), bad in zip(cases, aptops_all(*(args for args, _ in cases)), strict=True):
        assert bad.returncode != 0 and message in bad.stderr, (args, bad.stderr[-1500:])
        assert "Traceback" not in bad.stderr
    # no report folder (complete or partial) for a refused run; only its failure metrics (<out>.metrics)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("r1", "r2", "r3", ".r"))
                and not p.name.endswith(".metrics")]


def test_distill_cli_trains_a_student_and_reports_compression(tiny_llama, tmp_path):
    import json

    from tests.models import CORPUS

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    out = tmp_path / "student"
    env = {"APTOPS_NO_PROGRESS": "1"}
    done = aptops("distill", "run", str(tiny_llama), str(corpus), "--out", str(out), "--set", "training.block_size=32",
                  "--set", "objective.strategies={response: 1.0, relation: 0.5}",
                  "--set", "training.training_args.max_steps=2", "--set", "training.training_args.use_cpu=true", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval_top1_agreement" in done.stdout and (out / "result.json").is_file()
    report = aptops("distill", "evaluate", str(tiny_llama), str(out), str(corpus), "--out", str(tmp_path / "cmp"),
                    "--set", "evaluation.block_size=32", "--set", "new_tokens=2", env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "top1_agreement" in report.stdout and (tmp_path / "cmp" / "report.html").is_file()
    cases = [
        (("--set", "objective.temperature=0"), "temperature"),
        (("--set", "objective.alpha=1.5"), "alpha"),
        (("--set", "objective.strategies={response: 1.0, feature: 1.0}", "--set", "objective.layer_mappings={1: 9}"),
         "hidden states"),
        (("--set", "temperature=1"), "unknown config key 'temperature' for DistillConfig"),
        (("--set", "training.blok_size=1"), "unknown config key 'training.blok_size' for TrainConfig"),
    ]
    runs = aptops_all(*(("distill", "run", str(tiny_llama), str(corpus), "--out", str(tmp_path / f"bad{i}"),
                         "--set", "training.block_size=32", *args) for i, (args, _) in enumerate(cases)), env=env)
    for i, ((args, message), bad) in enumerate(zip(cases, runs, strict=True)):
        assert bad.returncode != 0 and message in bad.stderr, (args, bad.stderr[-2000:])
        assert "Traceback" not in bad.stderr and not (tmp_path / f"bad{i}" / "result.json").exists()


def test_prune_cli_and_bad_input(tiny_llama, tmp_path):
    import json

    from tests.models import CORPUS

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    env = {"APTOPS_NO_PROGRESS": "1"}
    out = tmp_path / "pruned"
    done = aptops("prune", "run", str(tiny_llama), str(corpus), "--out", str(out), "--set", "method=neuron",
                  "--set", "target_sparsity=0.5", "--set", "training.block_size=32",
                  "--set", "training.training_args.max_steps=2", "--set", "training.training_args.use_cpu=true", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prune_speedup" in done.stdout and (out / "prune.json").is_file()
    cases = [
        (("--set", "target_sparsity=1.5"), "target_sparsity"),
        (("--set", "method=head", "--set", "target_sparsity=0.9"), "whole groups"),
        (("--set", "method=shuffle"), "method"),
    ]
    runs = aptops_all(*(("prune", "run", str(tiny_llama), str(corpus), "--out", str(tmp_path / f"bad{i}"),
                         "--set", "training.block_size=32", *args) for i, (args, _) in enumerate(cases)), env=env)
    for i, ((args, message), bad) in enumerate(zip(cases, runs, strict=True)):
        assert bad.returncode != 0 and message in bad.stderr, (args, bad.stderr[-2000:])
        assert "Traceback" not in bad.stderr and not (tmp_path / f"bad{i}" / "result.json").exists()
