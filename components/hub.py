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
    trust_remote_code: bool = False,
    overrides: str = "",
    pipeline: str = "train",
    run_id: str = "",
):
    """Fetch a model (Hub id, or a folder the task can read) into a model artifact: safetensors only, the
    repo's own code dropped unless trust_remote_code."""
    from aptops.core.runtime import apply_overrides, run_component
    from aptops.hub import FetchConfig, fetch_model

    config = FetchConfig(revision=revision or None, trust_remote_code=trust_remote_code)
    config = apply_overrides(config, overrides)
    result = run_component("hub", lambda: fetch_model(repo, output_dir=model.path, config=config), step="import",
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
    overrides: str = "",
    pipeline: str = "train",
    run_id: str = "",
) -> str:
    """Publish a model with its tokenizer and a model card from its lineage; returns the commit URL."""
    from aptops.core.runtime import apply_overrides, list_param, run_component
    from aptops.hub import PublishConfig, publish_model

    info = {"license": license}
    if language:
        info["language"] = list_param(language)
    config = PublishConfig(private=private, revision_tag=tag or None, commit_message=commit_message or None,
                           model_info=info)
    config = apply_overrides(config, overrides)
    result = run_component("hub", lambda: publish_model(model.path, repo=repo, config=config), step="export",
                           pipeline=pipeline, run_id=run_id)
    return result.outputs["commit"]
