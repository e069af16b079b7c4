"""load_image: formats, the window parser, frames, padding, MONOCHROME1, enhanced multi-frame."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image

from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging import CT_PRESETS, Rejected, load_image, parse_frame, parse_window
from huatuo_cli.imaging.frames import frame_view
from tests.imaging_data import local_file


def test_window_parser():
    assert parse_window("auto").is_auto and parse_window(None).is_auto
    lung = parse_window("Lung").windows[0]
    assert (lung.center, lung.width) == (-600, 1500)
    assert parse_window("head soft tissue").windows[0] == CT_PRESETS["soft-tissue"]
    explicit = parse_window("40,400").windows[0]
    assert (explicit.center, explicit.width, explicit.name) == (40, 400, "")
    composite = parse_window("lung/mediastinum/bone")
    assert composite.is_composite and [w.name for w in composite.windows] == ["lung", "mediastinum", "bone"]
    assert parse_window("lung/-100,50/bone").windows[1].width == 50
    for bad in ("lungs", "40", "40,0", "lung/bone", "a,b"):
        with pytest.raises(HuatuoError):
            parse_window(bad)


def test_frame_parser():
    assert parse_frame("mid") == "mid" and parse_frame("ALL") == "all" and parse_frame("3") == 3
    for bad in ("-1", "middle", -2):
        with pytest.raises(HuatuoError):
            parse_frame(bad)


def test_presets_change_ct_output_and_composite_uses_three_windows():
    path = local_file("CT_small.dcm")
    lung = np.asarray(load_image(path, window="lung").frames[0])
    bone = np.asarray(load_image(path, window="bone").frames[0])
    assert not np.array_equal(lung, bone)
    composite = load_image(path, window="lung/mediastinum/bone")
    rgb = np.asarray(composite.frames[0])
    mediastinum = np.asarray(load_image(path, window="mediastinum").frames[0])
    assert np.array_equal(rgb[..., 0], lung[..., 0]) and np.array_equal(rgb[..., 1], mediastinum[..., 0])
    assert np.array_equal(rgb[..., 2], bone[..., 0])
    assert composite.meta.window.startswith("R/G/B lung")


def test_ct_preset_on_mr_falls_back_to_auto():
    image = load_image(local_file("MR_small.dcm"), window="lung")
    assert "needs CT" in image.meta.window


def test_auto_uses_file_window_then_ct_preset():
    assert load_image(local_file("MR_small.dcm")).meta.window == "file (C=600 W=1600)"
    assert load_image(local_file("CT_small.dcm")).meta.window.startswith("abdomen")


def test_monochrome1_is_inverted(tmp_path):
    path = local_file("RG3_UNCR.dcm")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME2"
    flipped = tmp_path / "m2.dcm"
    ds.save_as(flipped)
    m1 = np.asarray(load_image(path).frames[0], dtype=int)
    m2 = np.asarray(load_image(flipped).frames[0], dtype=int)
    assert np.array_equal(m1 + m2, np.full_like(m1, 255))


def test_padding_is_black_whatever_the_window(tmp_path):
    ds = pydicom.dcmread(local_file("CT_small.dcm"))
    arr = ds.pixel_array
    value = int(arr[0, 0])
    ds.PixelPaddingValue = value
    path = tmp_path / "padded.dcm"
    ds.save_as(path)
    out = np.asarray(load_image(path, window="-3000,10").frames[0])[..., 0]
    assert (out[arr == value] == 0).all() and (out[arr != value] == 255).all()


def test_meta_is_phi_free_and_describes_the_image():
    path = local_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    meta = load_image(path).meta
    assert (meta.modality, meta.rows, meta.columns, meta.number_of_frames) == ("CT", 128, 128, 1)
    assert meta.transfer_syntax == "Explicit VR Little Endian" and meta.photometric == "MONOCHROME2"
    text = repr(meta.as_dict())
    for value in (ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID, ds.StudyDate):
        assert str(value) not in text


def test_frames_mid_index_all_and_out_of_range():
    path = local_file("emri_small.dcm")  # 10 frames
    assert load_image(path).meta.frames == (5,)
    assert load_image(path, frame=2).meta.frames == (2,)
    every = load_image(path, frame="all")
    assert len(every.frames) == 10 and every.meta.frames == tuple(range(10))
    with pytest.raises(HuatuoError, match="has 10 frame"):
        load_image(path, frame=10)


def test_enhanced_per_frame_functional_groups_apply(tmp_path):
    ds = pydicom.dcmread(local_file("eCT_Supplemental.dcm"))
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    item = pydicom.Dataset()
    item.RescaleSlope, item.RescaleIntercept, item.RescaleType = 1, -2024, "HU"  # frame 2 shifted 1000 HU
    per_frame[1].PixelValueTransformationSequence = pydicom.Sequence([item])
    assert frame_view(ds, 1).RescaleIntercept == -2024
    assert frame_view(ds, 0).RescaleIntercept == shared.PixelValueTransformationSequence[0].RescaleIntercept
    path = tmp_path / "ect.dcm"
    ds.save_as(path)
    same_pixels = pydicom.dcmread(path)
    del same_pixels.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence
    a = np.asarray(load_image(path, window="-960,400", frame=1).frames[0], dtype=int)
    ref_path = tmp_path / "ref.dcm"
    same_pixels.save_as(ref_path)
    b = np.asarray(load_image(ref_path, window="40,400", frame=1).frames[0], dtype=int)
    assert np.abs(a - b).max() <= 1 and a.std() > 5


def test_dicom_without_preamble_or_extension(tmp_path):
    ds = pydicom.dcmread(local_file("CT_small.dcm"))
    raw = tmp_path / "IMAGE0001"
    ds.preamble = None
    pydicom.dcmwrite(raw, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    data = raw.read_bytes()
    assert data[128:132] != b"DICM"
    bare = tmp_path / "bare"  # data set only: no preamble, no file meta
    ds2 = pydicom.dcmread(local_file("CT_small.dcm"))
    ds2.file_meta = pydicom.dataset.FileMetaDataset()
    ds2.preamble = None
    pydicom.dcmwrite(bare, ds2, enforce_file_format=False, implicit_vr=True, little_endian=True)
    expected = np.asarray(load_image(local_file("CT_small.dcm")).frames[0])
    for path in (raw, bare):
        assert np.array_equal(np.asarray(load_image(path).frames[0]), expected)


def test_text_and_junk_are_rejected_not_rendered(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("Patient John Doe, chest pain, see report\n" * 20)
    with pytest.raises(Rejected) as info:
        load_image(text)
    assert info.value.category == "not-dicom" and "John" not in str(info.value)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(Rejected):
        load_image(empty)
    with pytest.raises(HuatuoError, match="no such file"):
        load_image(tmp_path / "missing.dcm")


def test_png_jpeg_tiff_and_16bit(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    gray16 = (np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 20)
    Image.fromarray(gray16).save(tmp_path / "b.tif")
    pages = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    pages[0].save(tmp_path / "multi.tiff", save_all=True, append_images=pages[1:])
    png = load_image(tmp_path / "a.png")
    assert np.array_equal(np.asarray(png.frames[0]), rgb) and png.meta.source == "png"
    assert load_image(tmp_path / "a.jpg").frames[0].size == (60, 40)
    tif = load_image(tmp_path / "b.tif")
    out = np.asarray(tif.frames[0])[..., 0]
    assert tif.meta.window.startswith("percentiles") and out.min() == 0 and out.max() == 255
    multi = load_image(tmp_path / "multi.tiff", frame="all")
    assert multi.meta.number_of_frames == 2 and len(multi.frames) == 2


def test_composite_on_colour_is_a_user_error():
    with pytest.raises(HuatuoError, match="grayscale"):
        load_image(local_file("US1_UNCR.dcm"), window="lung/mediastinum/bone")
