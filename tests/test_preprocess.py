"""numpy/PIL preprocessing equals the official one (LLaVA expand2square + transformers' PIL CLIP processor)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from huatuo_cli.engine.preprocess import PreprocessConfig, preprocess
from huatuo_convert.synth import SynthSpec, _preprocessor_config


def llava_expand2square(pil_img, background_color):
    """Verbatim from LLaVA's mm_utils.py (the official code path), not huatuo's copy."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def official(images, raw):
    proc = CLIPImageProcessorPil(**{k: v for k, v in raw.items() if k != "image_processor_type"})
    mean = tuple(int(x * 255) for x in proc.image_mean)
    return proc([llava_expand2square(i.convert("RGB"), mean) for i in images], return_tensors="np")["pixel_values"]


def sample_images():
    rng = np.random.default_rng(7)
    return [
        Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)),  # wide
        Image.fromarray(rng.integers(0, 256, (517, 211), dtype=np.uint8), mode="L"),  # tall grayscale
        Image.fromarray(rng.integers(0, 256, (999, 1000, 3), dtype=np.uint8)),  # odd padding, downscale
        Image.fromarray(rng.integers(0, 256, (20, 31, 4), dtype=np.uint8), mode="RGBA"),  # upscale, alpha
        Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8)),  # already the right size
        Image.fromarray(rng.integers(0, 2 ** 16, (64, 80), dtype=np.uint16).astype(np.int32), mode="I"),  # 16-bit
    ]


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
