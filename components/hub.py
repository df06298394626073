"""Components of the hub stage (image ``aptops-hub``, CPU pool).

The Hub token is never a parameter: it reaches the task as ``HF_TOKEN`` from a Kubernetes Secret
(``ClusterSettings.credential_secrets``), or from the local environment under ``kfp.local``.
No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp.dsl import Artifact, Input, Metrics, Model, Output

from aptops_components import stage_component


@stage_component("hub", pipeline="train", config="aptops.hub:FetchConfig",
                 tuned=("revision", "trust_remote_code"))
def import_model(
    repo: str,
    model: Output[Model],
    metrics: Output[Metrics],
    **tuned,
):
    """Fetch a model (Hub id, or a folder the task can read) into a model artifact: safetensors only, the
    repo's own code dropped unless trust_remote_code."""
    params = dict(locals())
    from aptops.core.runtime import config_from_params, run_step
    from aptops.hub import FetchConfig, fetch_model

    config = config_from_params(FetchConfig, params)
    result = run_step("hub", "import", lambda: fetch_model(repo, output_dir=model.path, config=config), params)
    model.metadata.update({"source": repo, "commit": str(result.details.get("commit"))})


@stage_component("hub", pipeline="train", config="aptops.hub:PublishConfig",
                 tuned=("private", "tag", "commit_message"), paths={"tag": "revision_tag"})
def export_model(
    model: Input[Model],
    repo: str,
    evaluation: Input[Artifact] = None,
    license: str = "apache-2.0",
    language: str = "",
    **tuned,
) -> str:
    """Publish a model with its tokenizer and a model card from its lineage; returns the commit URL.

    evaluation: the model's eval task results (the eval component's results artifact): the card's model-index
    and evaluation table state them."""
    params = dict(locals())
    import json
    import os

    from aptops.core.runtime import config_from_params, list_param, run_step
    from aptops.hub import PublishConfig, publish_model

    card = {"license": license, **({"language": list_param(language)} if language else {})}
    judged = os.path.join(evaluation.path, "results.json") if evaluation is not None else ""
    if judged and os.path.isfile(judged):
        with open(judged, encoding="utf-8") as fh:
            runs = list(json.load(fh).get("models", {}).values())
        if runs:
            card["evaluation"] = runs[0]
    config = config_from_params(PublishConfig, {**params, "model_info": card}, paths={"tag": "revision_tag"})
    result = run_step("hub", "export", lambda: publish_model(model.path, repo=repo, config=config), params)
    return result.outputs["commit"]
