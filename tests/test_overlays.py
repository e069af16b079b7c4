"""Overlay planes (60xx) are drawn as dcmtk's dcm2pnm draws them: in previews and thumbnails always,
in what the model sees only with `overlays="model"`."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from huatuo_cli.imaging import load_image
from huatuo_cli.imaging.overlays import draw
from tests.imaging_data import local_file

FILES = ["MR-SIEMENS-DICOM-WithOverlays.dcm", "examples_overlay.dcm"]


def dcm2pnm(path, tmp_path) -> np.ndarray:
    assert shutil.which("dcm2pnm"), "dcmtk is required: `make system-deps`"
    out = tmp_path / "ref.pnm"
    run = subprocess.run(["dcm2pnm", "+Ww", "450", "790", str(path), str(out)], check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("name", FILES)
def test_overlay_drawn_like_dcmtk(name, tmp_path):
    path = local_file(name)
    reference = dcm2pnm(path, tmp_path)
    plain = load_image(path, window="450,790")
    mask = plain.overlays[0]
    assert mask is not None and mask.sum() > 100
    ours = np.asarray(draw(plain.frames[0], mask), dtype=np.int16)
    assert np.abs(reference - ours).max() <= 1
    # without the overlay the overlay pixels differ from what a viewer shows
    assert np.abs(reference - np.asarray(plain.frames[0], dtype=np.int16)).max() > 100
    # the model sees them only when asked
    shown = load_image(path, window="450,790", overlays="model")
    assert np.array_equal(np.asarray(shown.frames[0]), np.asarray(ours, dtype=np.uint8))


def test_images_without_overlays_have_none():
    assert load_image(local_file("CT_small.dcm")).overlays == [None]


def test_inspect_previews_show_overlays(tmp_path):
    from click.testing import CliRunner

    from huatuo_cli.cli import cli

    path = local_file("examples_overlay.dcm")
    res = CliRunner().invoke(cli, ["inspect", str(path), "--window", "450,790", "--png", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (png,) = tmp_path.rglob("*.png")
    reference = dcm2pnm(path, tmp_path)
    assert np.abs(reference - np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)).max() <= 1
