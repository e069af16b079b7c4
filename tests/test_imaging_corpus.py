"""Every file pydicom and pydicom-data ship is rendered, or rejected with its specific reason.

The expected rejections are listed by category: a regression that turns a renderable file into
a rejection (or one reason into another) fails here, as does any exception that is not a
`Rejected`.
"""

from __future__ import annotations

import numpy as np
import pytest

from huatuo_cli.imaging import Rejected, load_image
from huatuo_cli.imaging.reject import gpl_decoder_installed
from tests.imaging_data import corpus, run_without_gpl_decoder

EXPECTED_REJECTIONS: dict[str, list[str]] = {
    "corrupt": ["pydicom:JPEG2000-embedded-sequence-delimiter.dcm"],
    "dicomdir": [
        "pydicom:dicomdirtests/DICOMDIR", "pydicom:dicomdirtests/DICOMDIR-bigEnd",
        "pydicom:dicomdirtests/DICOMDIR-empty.dcm", "pydicom:dicomdirtests/DICOMDIR-implicit",
        "pydicom:dicomdirtests/DICOMDIR-nooffset", "pydicom:dicomdirtests/DICOMDIR-nopatient",
        "pydicom:dicomdirtests/DICOMDIR-reordered", "pydicom:dicomdirtests/TINY_ALPHA/DICOMDIR",
    ],
    "incomplete-attributes": ["pydicom:meta_missing_tsyntax.dcm", "pydicom:nested_priv_SQ.dcm"],
    "needs-gpl-extra": ["pydicom:JPEG-lossy.dcm", "pydicom:JPGExtended.dcm"],
    "no-pixel-data": [
        "pydicom:UN_sequence.dcm", "pydicom:empty_charset_LEI.dcm", "pydicom:no_meta_group_length.dcm",
        "pydicom:priv_SQ.dcm",
    ],  # plus the 50 header-only TINY_ALPHA images (added below)
    "archive": ["pydicom:zipMR.gz"],
    "not-dicom": [
        "pydicom:README.txt", "pydicom:crayons.icc", "pydicom:dicomdirtests/README.txt",
        "pydicom:dicomdirtests/TINY_ALPHA/README", "pydicom:no_meta.dcm", "pydicom:rtplan.dump",
        "pydicom:rtstruct.dump", "pydicom:test1.json", "pydicom:test_PN.json",
    ],
    "radiotherapy": [
        "pydicom:ExplVR_BigEndNoMeta.dcm", "pydicom:ExplVR_LitEndNoMeta.dcm", "pydicom:badVR.dcm",
        "pydicom:rtdose.dcm", "pydicom:rtdose_1frame.dcm", "pydicom:rtdose_expb.dcm",
        "pydicom:rtdose_expb_1frame.dcm", "pydicom:rtdose_rle.dcm", "pydicom:rtdose_rle_1frame.dcm",
        "pydicom:rtplan.dcm", "pydicom:rtplan_truncated.dcm", "pydicom:rtstruct.dcm",
    ],
    "segmentation": [
        "pydicom-data:liver.dcm", "pydicom-data:liver_expb.dcm", "pydicom:liver_1frame.dcm",
        "pydicom:liver_expb_1frame.dcm",
    ],
    "structured-report": ["pydicom:reportsi.dcm", "pydicom:reportsi_with_empty_number_tags.dcm", "pydicom:test-SR.dcm"],
    "truncated": ["pydicom-data:emri_small_jpeg_2k_lossless_too_short.dcm", "pydicom:MR_truncated.dcm"],
    "waveform": ["pydicom:waveform_ecg.dcm"],
}

FILES = corpus()


def _expected() -> dict[str, str]:
    out = {key: cat for cat, keys in EXPECTED_REJECTIONS.items() for key in keys}
    for key in FILES:
        if key.startswith("pydicom:dicomdirtests/TINY_ALPHA/PT000000/"):
            out[key] = "no-pixel-data"
    if gpl_decoder_installed():  # the optional extra is there (both paths are tested below)
        out.update(WITH_GPL_DECODER)
    return out


#: what the two 12-bit JPEG files become with pylibjpeg-libjpeg installed: JPGExtended renders;
#: JPEG-lossy.dcm breaks the standard (libjpeg: "scan start must be zero and scan stop must be 63
#: for the sequential operating modes"), so it is corrupt, not a missing decoder
WITH_GPL_DECODER = {"pydicom:JPGExtended.dcm": "rendered", "pydicom:JPEG-lossy.dcm": "corrupt"}


def test_corpus_is_the_local_one():
    """Both packages are installed and nothing needed a download (pydicom 3.0.2 + pydicom-data 1.0.0)."""
    assert sum(k.startswith("pydicom:") for k in FILES) > 150
    assert sum(k.startswith("pydicom-data:") for k in FILES) > 60


def test_every_shipped_file_renders_or_is_rejected_specifically():
    expected = _expected()
    rendered, got = 0, {}
    for key, path in sorted(FILES.items()):
        try:
            image = load_image(path)
        except Rejected as exc:
            got[key] = exc.category
            reason = exc.reason
            assert reason and str(path.parent) not in reason, key
            assert path.name not in reason or path.name == "DICOMDIR", key
            continue
        rendered += 1
        meta = image.meta
        assert image.frames and len(image.frames) == len(meta.frames), key
        for frame in image.frames:
            assert frame.mode == "RGB" and frame.size == (meta.columns, meta.rows), key
        assert meta.transfer_syntax and meta.window and meta.number_of_frames >= 1, key
    wrong = {k: (got.get(k, "rendered"), expected.get(k, "rendered")) for k in FILES
             if got.get(k, "rendered") != expected.get(k, "rendered")}
    assert not wrong, f"(got, expected) differ: {wrong}"
    assert rendered >= 140


def test_rendered_images_are_not_blank():
    """A pipeline bug that maps everything to one grey level would still 'render'."""
    for name in ("CT_small.dcm", "MR_small.dcm", "RG3_UNCR.dcm", "vlut_04.dcm", "mlut_18.dcm",
                 "OBXXXX1A.dcm", "US1_J2KR.dcm", "emri_small_jpeg_ls_lossless.dcm", "color3d_jpeg_baseline.dcm"):
        key = next(k for k in FILES if k.endswith(":" + name))
        arr = np.asarray(load_image(FILES[key]).frames[0])
        assert arr.std() > 5, name


GPL_ONLY = ["JPGExtended.dcm", "JPEG-lossy.dcm"]  # 12-bit JPEG: only pylibjpeg-libjpeg (GPL) decodes them


def test_12bit_jpeg_renders_with_the_gpl_extra():
    """The documented extra's path (make install adds `dicom-gpl` for the tests): a conformant file renders."""
    assert gpl_decoder_installed(), "the test environment installs huatuo-cli[dicom-gpl] (Makefile install)"
    image = load_image(FILES["pydicom:JPGExtended.dcm"])
    assert image.frames and np.asarray(image.frames[0]).std() > 5
    with pytest.raises(Rejected) as info:
        load_image(FILES["pydicom:JPEG-lossy.dcm"])
    assert info.value.category == "corrupt" and "dicom-gpl" not in str(info.value)


def test_12bit_jpeg_without_the_gpl_extra_names_it():
    """The default install's path (the decoder hidden in a fresh interpreter): a specific rejection."""
    keys = [next(k for k in FILES if k.endswith(":" + name)) for name in GPL_ONLY]
    code = (
        "import json, sys\n"
        "from huatuo_cli.imaging import Rejected, load_image\n"
        "from huatuo_cli.imaging.reject import gpl_decoder_installed\n"
        "assert not gpl_decoder_installed()\n"
        "out = []\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_image(path)\n"
        "        out.append(['rendered', ''])\n"
        "    except Rejected as exc:\n"
        "        out.append([exc.category, str(exc)])\n"
        "print(json.dumps(out))\n"
    )
    import json
    import sys

    proc = run_without_gpl_decoder(code.replace("sys.argv[1:]", repr([str(FILES[k]) for k in keys])))
    assert proc.returncode == 0, proc.stderr
    for category, message in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert category == "needs-gpl-extra", message
        assert "pylibjpeg-libjpeg" in message and "dicom-gpl" in message
    assert sys.modules.get("libjpeg", "absent") is not None  # this process was left alone
