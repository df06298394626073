"""Fixtures for the multimodal tests: tiny encoders from configs, the real MiniLM, the sample task."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from aptops.core.assets import minilm_folder
from aptops.multimodal.recipe import TINY_ENCODERS
from aptops.multimodal.samples import build_sample_task


@pytest.fixture(scope="session")
def minilm():
    return minilm_folder()


@pytest.fixture(scope="session")
def tiny_specs():
    return {"image": dict(TINY_ENCODERS["image"]), "audio": dict(TINY_ENCODERS["audio"])}


@pytest.fixture(scope="session")
def sample_task(tmp_path_factory):
    """6 classes, 16 training and 6 held-out rows each; a quarter of the training rows miss one modality."""
    return build_sample_task(tmp_path_factory.mktemp("mm") / "task", classes=6, train_per_class=16,
                             eval_per_class=6, image_size=32, missing=0.25, seed=1)


@pytest.fixture
def wav(tmp_path):
    """Write a wav: ``wav(name, seconds, rate, amplitude)`` -> path (a 440 Hz tone, or silence at 0)."""

    def make(name="tone.wav", seconds=1.0, rate=48000, amplitude=0.3):
        t = np.arange(int(seconds * rate)) / rate
        path = tmp_path / name
        sf.write(path, (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
        return path

    return make
