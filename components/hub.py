"""Components of the hub stage (image ``aptops-hub``, CPU pool).

The Hub token is never a parameter: it reaches the task as ``HF_TOKEN`` from a Kubernetes Secret
(``ClusterSettings.credential_secrets``), or from the local environment under ``kfp.local``.
No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from aptops_components import stage_image

IMAGE = stage_image("hub")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def import_model(
    repo: str,
    model: Output[Model],
    metrics: Output[Metrics],
    revision: str = "",
    pipeline: str = "train",
    run_id: str = "",
):
    """Fetch a model (Hub id, or a folder the task can read) into a model artifact: safetensors only."""
    from aptops.core.runtime import run_component
    from aptops.hub import fetch_model

    result = run_component("hub", lambda: fetch_model(repo, model.path, revision=revision or None), step="import",
                           pipeline=pipeline, run_id=run_id, metrics=metrics)
    model.metadata.update({"source": repo, "commit": str(result.details.get("commit"))})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_model(
    model: Input[Model],
    repo: str,
    private: bool = True,
    tag: str = "",
    commit_message: str = "",
    license: str = "apache-2.0",
    language: str = "",
    pipeline: str = "train",
    run_id: str = "",
) -> str:
    """Publish a model with its tokenizer and a model card from its lineage; returns the commit URL."""
    from aptops.core.artifacts import StageResult
    from aptops.core.runtime import list_param, run_component
    from aptops.hub import export_to_huggingface

    info = {"license": license}
    if language:
        info["language"] = list_param(language)
    urls = []

    def work():
        urls.append(export_to_huggingface(model.path, None, repo, private=private, revision_tag=tag or None,
                                          commit_message=commit_message or None, model_info=info))
        return StageResult("hub", outputs={"commit": urls[0]}, metrics={"published": 1.0})

    run_component("hub", work, step="export", pipeline=pipeline, run_id=run_id)
    return urls[0]
