"""The official preprocessing (LLaVA's expand2square + transformers' CLIP processor) and images to
compare ours against."""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil


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
