"""``aptops multimodal ...``: the multimodal stage's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from aptops.cli.common import In, Opt, OverwriteOpt, app, console, metrics_table, stage_command

multimodal_app = typer.Typer(help="The multimodal stage: text + image + audio encoders, fusion, joint training.",
                              no_args_is_help=True)
app.add_typer(multimodal_app, name="multimodal")


stage_command(
    multimodal_app, "train", stage="multimodal", run="aptops.multimodal:train_multimodal_model",
    config="aptops.multimodal:MultimodalConfig",
    inputs=[In("manifest", "A JSONL / Parquet manifest: text, image, audio, label (start, end).")],
    options=[Opt("--eval", "eval_data", "An evaluation manifest (else a share is held out).")],
    out="The model folder (report.html, metrics.json inside).", trainjob=True,
    show=metrics_table("multimodal model: {out} (report: {out}/report.html)",
                       lambda k: k.startswith(("eval_", "chance_")) or k in ("train_loss", "samples_per_second")),
    doc="Train (--set text_encoder=FOLDER --set fusion=concat|add|attention --set freeze=[text] --set epochs=10).")


@multimodal_app.command("predict")
def multimodal_predict(
    model: Annotated[Path, typer.Argument(help="A model folder written by `aptops multimodal train`.")],
    text: Annotated[str | None, typer.Option(help="The text input.")] = None,
    image: Annotated[Path | None, typer.Option(help="An image file.")] = None,
    audio: Annotated[Path | None, typer.Option(help="An audio file (WAV, FLAC, OGG ...).")] = None,
) -> None:
    """Predict from any subset of text, image and audio; prints JSON."""
    from aptops.multimodal import MultimodalModel, inference_multimodal

    if text is None and image is None and audio is None:
        raise typer.BadParameter("give at least one of --text, --image, --audio")
    loaded = MultimodalModel.from_pretrained(model)
    result = inference_multimodal(loaded, text_input=text, image_input=image, audio_input=audio)
    result.pop("embedding", None)
    if "probabilities" in result:
        names = loaded.config.id2label
        result["probabilities"] = {names.get(i, str(i)): round(p, 4) for i, p in enumerate(result["probabilities"])}
    print(json.dumps(result, indent=2))


@multimodal_app.command("sample")
def multimodal_sample(
    out: Annotated[Path, typer.Argument(help="Where the sample task (train.jsonl, eval.jsonl, images/, audio/) goes.")],
    classes: Annotated[int, typer.Option(help="Classes (2-8): photo + spoken recording + captions each.")] = 6,
    missing: Annotated[float, typer.Option(help="Share of training rows that lose one modality.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Build the sample task from packaged photos (scikit-image) and recordings (alsa-utils)."""
    from aptops.core.artifacts import output_policy
    from aptops.multimodal.samples import build_sample_task

    with output_policy(overwrite=overwrite):
        folder = build_sample_task(out, classes=classes, missing=missing, seed=seed)
    console.print(f"sample task: {folder / 'train.jsonl'} and {folder / 'eval.jsonl'}")
