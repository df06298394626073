import pytest

kfp = pytest.importorskip("kfp")


def test_rebased_component_keeps_the_function(tmp_path):
    from aptops.cluster.settings import ClusterSettings
    from aptops_components import data

    comp = ClusterSettings(image_registry="registry.example.com/ml", image_tag="v9").component(data.clean_text, "data")
    assert comp.component_spec.implementation.container.image == "registry.example.com/ml/aptops-data:v9"
    assert comp.python_func is data.clean_text.python_func


@pytest.mark.slow
def test_clean_component_runs_under_kfp_local(tmp_path, monkeypatch):
    from kfp import local

    from aptops_components import data

    src = tmp_path / "in.txt"
    src.write_text("hello  https://x.io world\n\u200b\nsecond line\n")
    monkeypatch.setenv("APTOPS_METRICS_DIR", str(tmp_path / "prom"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = data.clean_text(source=str(src), run_id="t1")
    ds = task.outputs["dataset"]
    import pyarrow.parquet as pq

    rows = pq.read_table(f"{ds.path}/part-00000.parquet").column("text").to_pylist()
    assert rows == ["hello world", "second line"]
    assert ds.metadata["rows"] == 2
    assert 'aptops_data_rows_out{pipeline="data",run_id="t1",stage="data",step="clean"} 2.0' in (
        tmp_path / "prom" / "clean.prom"
    ).read_text()


@pytest.mark.slow
def test_process_and_balance_components_run_under_kfp_local(tmp_path, monkeypatch):
    import json

    from kfp import local

    from aptops.data.io import read_dataset
    from aptops_components import data

    rows = [{"text": f"food fortune number {i} about cooking dinner", "label": "food"} for i in range(9)]
    rows += [{"text": f"pet fortune number {i} about cats and dogs", "label": "pets"} for i in range(3)]
    src = tmp_path / "raw.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setenv("APTOPS_METRICS_DIR", str(tmp_path / "prom"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    from kfp import dsl

    @dsl.pipeline(name="process-then-balance")
    def flow(source: str):
        processed = data.process_data(source=source, steps="clean,dedup", overrides="dedup:\n  threshold: 0.9\n")
        data.balance_classes(dataset=processed.outputs["dataset"], method="undersample")

    flow(source=str(src))
    (balanced,) = [p for p in (tmp_path / "root").rglob("balance-classes/balanced") if (p / "result.json").exists()]
    assert read_dataset(balanced).num_rows == 6
    stats = json.loads((balanced / "stats.json").read_text())
    assert stats["before"] == {"food": 9, "pets": 3} and stats["after"] == {"food": 3, "pets": 3}
