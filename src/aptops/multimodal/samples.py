"""A small real multimodal task built from photos and recordings that ship in packages.

Each class pairs one scikit-image photo with one spoken ALSA test recording (Debian ``alsa-utils``:
"front left", "rear right" ...) and a few captions. An example is a random crop of the photo, a random
segment (``start`` / ``end`` in the manifest) of the recording and one caption; held-out examples use other
crops, other segments and captions never seen in training. The model must tell which class a row belongs
to from whatever modalities the row has — text alone is easy for a pretrained text encoder, the photo crops
and speech segments have to be learned.

Used by the tests, ``make demo`` and ``bench/multimodal_cache.py``::

    python -c "from aptops.multimodal.samples import build_sample_task as b; print(b('runs/mm-data'))"
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from aptops.core.artifacts import StageResult, atomic_output, finish_artifact
from aptops.core.deps import require
from aptops.core.errors import ArtifactNotFoundError, ConfigError

ALSA_SOUNDS = Path("/usr/share/sounds/alsa")


@dataclass(frozen=True)
class SampleClass:
    name: str
    photo: str  # a file in skimage's data folder
    sound: str  # a file in /usr/share/sounds/alsa
    captions: tuple[str, ...]  # the last one is held out for evaluation


CLASSES: tuple[SampleClass, ...] = (
    SampleClass("astronaut", "astronaut.png", "Front_Left.wav",
                ("an astronaut in a white space suit", "a portrait of a space traveller with a flag",
                 "the woman who flew on the shuttle", "a NASA crew member smiling in her spacesuit")),
    SampleClass("cat", "chelsea.png", "Front_Right.wav",
                ("a ginger cat looking up", "a tabby kitten with green eyes", "a pet cat sitting indoors",
                 "an orange cat staring at the camera")),
    SampleClass("coffee", "coffee.png", "Rear_Left.wav",
                ("a cup of coffee on a saucer", "an espresso in a white mug", "a hot drink with a spoon",
                 "a coffee cup seen from above")),
    SampleClass("rocket", "rocket.jpg", "Rear_Right.wav",
                ("a rocket on the launch pad", "a space launch vehicle before lift-off",
                 "a tall rocket standing under a blue sky", "the launch tower next to a rocket")),
    SampleClass("motorcycle", "motorcycle_left.png", "Front_Center.wav",
                ("a motorcycle parked in a room", "a red motorbike seen from the side", "a sport bike on display",
                 "a motorbike standing in a garage")),
    SampleClass("stars", "hubble_deep_field.jpg", "Side_Left.wav",
                ("galaxies in deep space", "a telescope image of distant galaxies", "the night sky full of stars",
                 "a deep field photo from the space telescope")),
    SampleClass("cells", "ihc.png", "Side_Right.wav",
                ("stained tissue under a microscope", "a microscope slide of cells", "a histology sample",
                 "brown and blue stained cells")),
    SampleClass("retina", "retina.jpg", "Rear_Center.wav",
                ("a photo of the back of an eye", "a retina scan with blood vessels", "an eye fundus image",
                 "the optic disc in a retinal photo")),
)


def _photo_dir() -> Path:
    skimage = require("skimage", extra="test", feature="the sample photos (scikit-image)")
    return Path(skimage.__file__).parent / "data"


def build_sample_task(out_dir: str | Path, *, classes: int = 6, train_per_class: int = 24, eval_per_class: int = 8,
                      image_size: int = 64, segment_seconds: float = 1.1, missing: float = 0.0,
                      seed: int = 0) -> Path:
    """Write ``train.jsonl``, ``eval.jsonl``, ``images/`` (crops) into ``out_dir`` (atomically) and return it.

    Args:
        classes: how many classes (2 to 8).
        train_per_class / eval_per_class: examples per class in each split.
        image_size: the side of the saved crops, in pixels.
        segment_seconds: the length of each audio segment.
        missing: the share of training rows that lose one modality (chosen at random, never the last one).
        seed: the random seed.

    Raises:
        ArtifactNotFoundError: scikit-image or the ALSA recordings are not installed.
    """
    image_mod = require("PIL.Image", extra="multimodal", feature="the sample photos")
    sf = require("soundfile", extra="multimodal", feature="the sample recordings")
    if not 2 <= classes <= len(CLASSES):
        raise ConfigError(f"classes must be between 2 and {len(CLASSES)}", field="classes", value=classes)
    if not 0.0 <= missing < 1.0:
        raise ConfigError("missing must be in [0, 1)", field="missing", value=missing)
    photos = _photo_dir()
    chosen = CLASSES[:classes]
    for c in chosen:
        for path in (photos / c.photo, ALSA_SOUNDS / c.sound):
            if not path.is_file():
                hint = "apt-get install alsa-utils" if path.parent == ALSA_SOUNDS else "pip install scikit-image"
                raise ArtifactNotFoundError(f"the sample asset {path} is missing: {hint} (make setup does it)",
                                            path=str(path))
    rng = random.Random(seed)
    out = Path(out_dir)
    with atomic_output(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "audio").mkdir()
        counts = {}
        for split, per_class in (("train", train_per_class), ("eval", eval_per_class)):
            rows = []
            for c in chosen:
                photo = image_mod.open(photos / c.photo).convert("RGB")
                sound = tmp / "audio" / c.sound
                if not sound.exists():  # the manifest must not depend on a system folder
                    sound.write_bytes((ALSA_SOUNDS / c.sound).read_bytes())
                duration = sf.info(str(sound)).duration
                captions = c.captions[:-1] if split == "train" else c.captions[-1:]
                for k in range(per_class):
                    w, h = photo.size
                    side = int(min(w, h) * rng.uniform(0.35, 0.8))
                    x, y = rng.randint(0, w - side), rng.randint(0, h - side)
                    crop = photo.crop((x, y, x + side, y + side)).resize((image_size, image_size))
                    if rng.random() < 0.5:
                        crop = crop.transpose(image_mod.Transpose.FLIP_LEFT_RIGHT)
                    name = f"images/{split}-{c.name}-{k:03d}.png"
                    crop.save(tmp / name)
                    length = min(segment_seconds, duration)
                    start = round(rng.uniform(0.0, duration - length), 3)
                    row = {"id": f"{split}-{c.name}-{k}", "text": rng.choice(captions), "image": name,
                           "audio": f"audio/{c.sound}", "start": start, "end": round(start + length, 3),
                           "label": c.name}
                    if split == "train" and rng.random() < missing:
                        gone = rng.choice(["text", "image", "audio"])
                        row[gone] = None
                        if gone == "audio":
                            row["start"] = row["end"] = None
                    rows.append(row)
            rng.shuffle(rows)
            with (tmp / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
            counts[f"{split}_rows"] = float(len(rows))
        finish_artifact(tmp, StageResult("multimodal", outputs={"train": str(out / "train.jsonl"),
                                                                "eval": str(out / "eval.jsonl")},
                                         metrics=counts, details={"classes": [c.name for c in chosen],
                                                                  "seed": seed, "missing": missing}))
    return out
