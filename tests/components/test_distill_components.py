"""The distill components under kfp.local: a student from a tiny Llama, then the compression report."""

import json

import pytest

kfp = pytest.importorskip("kfp")


def test_distill_components_use_the_distill_image():
    from aptops_components import distill

    for comp in (distill.distill_model, distill.evaluate_compression):
        assert comp.component_spec.implementation.container.image == "aptops/aptops-distill:0.1.0"


@pytest.mark.slow
def test_distill_then_evaluate_under_kfp_local(tiny_llama, tmp_path, monkeypatch):
    from kfp import dsl, local

    from aptops_components import distill
    from tests.models import CORPUS

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    monkeypatch.setenv("APTOPS_METRICS_DIR", str(tmp_path / "prom"))
    monkeypatch.setenv("APTOPS_NO_PROGRESS", "1")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def compress(model_dir: str, data: str):
        teacher = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model)
        dataset = dsl.importer(artifact_uri=data, artifact_class=dsl.Dataset)
        student = distill.distill_model(teacher=teacher.output, dataset=dataset.output, block_size=32, max_steps=2,
                                        batch_size=4, eval_fraction=0.2, strategies='{"response": 1, "relation": 0.5}',
                                        training_args='{"use_cpu": true}', debug=True, run_id="c1")
        distill.evaluate_compression(original=teacher.output, compressed=student.outputs["student"],
                                     dataset=dataset.output, block_size=32, max_blocks=4, run_id="c1")

    compress(model_dir=str(tiny_llama), data=str(corpus))
    root = tmp_path / "root"
    (student,) = root.rglob("distill-model/student")
    assert (student / "result.json").is_file() and (student / "model.safetensors").is_file()
    (debug_report,) = root.rglob("distill-model/debug_report")
    assert "aptops training debug report" in debug_report.read_text()
    (output,) = root.rglob("evaluate-compression/executor_output.json")
    values = json.loads(output.read_text())["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert values["ratio_params"] == 1.0  # 2 blocks, stride 2 keeps both: the same size
    assert 0 <= values["compressed_top1_agreement"] <= 1
    (report,) = root.rglob("evaluate-compression/report")
    assert "Trade-off" in report.read_text()
