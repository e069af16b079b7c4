"""numpy/PIL preprocessing equals the official one (LLaVA expand2square + transformers' PIL CLIP processor)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from huatuo_cli.engine.preprocess import PreprocessConfig, preprocess
from huatuo_convert.synth import SynthSpec, _preprocessor_config
from tests.preprocess_reference import official, sample_images


@pytest.mark.parametrize("size", [336, 56])
def test_matches_official_preprocessing(size):
    raw = _preprocessor_config(SynthSpec(image_size=size))
    images = sample_images()
    mine = preprocess(images, PreprocessConfig.from_dict(raw))
    ref = official(images, raw)
    assert mine.shape == ref.shape == (len(images), 3, size, size)
    assert mine.dtype == np.float32
    assert np.abs(mine - ref).max() <= 1e-6


def test_padding_colour_is_truncated_mean():
    raw = _preprocessor_config(SynthSpec())
    cfg = PreprocessConfig.from_dict(raw)
    assert cfg.background == (122, 116, 104)
    # the padded band of a wide black image is the mean colour: normalised it is ~0, not -mean/std
    px = preprocess([Image.new("RGB", (112, 56))], cfg)[0]
    assert np.abs(px[:, 0, :]).max() < 0.02  # truncation of mean*255 leaves ~0.011
    assert px[:, 28, :].mean() < -1.5
