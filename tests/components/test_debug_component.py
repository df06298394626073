"""The debug component under kfp.local on a tiny Llama and a small JSONL corpus."""

import json

import pytest

kfp = pytest.importorskip("kfp")


def test_debug_component_uses_the_debug_image():
    from aptops_components import debug

    container = debug.debug_model.component_spec.implementation.container
    assert container.image == "aptops/aptops-debug:0.1.0"
    assert "pip install" not in " ".join(container.command)


@pytest.mark.slow
def test_debug_component_runs_under_kfp_local(tiny_llama, tmp_path, monkeypatch):
    from kfp import dsl, local

    from aptops_components import debug
    from tests.models import CORPUS

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 2))
    monkeypatch.setenv("APTOPS_METRICS_DIR", str(tmp_path / "prom"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def p(model_dir: str, data: str):
        model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model)
        dataset = dsl.importer(artifact_uri=data, artifact_class=dsl.Dataset)
        debug.debug_model(model=model.output, dataset=dataset.output, block_size=32, steps=6, run_id="dbg")

    p(model_dir=str(tiny_llama), data=str(corpus))
    root = tmp_path / "root"
    (report,) = root.rglob("debug-model/report")
    assert "Findings and suggestions" in report.read_text()
    (details,) = root.rglob("debug-model/details")
    assert {"report.html", "report.json", "report.pdf", "result.json"} <= {p.name for p in details.iterdir()}
    (output,) = root.rglob("debug-model/executor_output.json")
    values = json.loads(output.read_text())["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert values["forward_flops"] > 0 and "dead_neuron_ratio" in values
    assert (tmp_path / "prom" / "debug.prom").is_file()
