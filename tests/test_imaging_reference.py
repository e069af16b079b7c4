"""Our rendering against dcmtk's dcm2pnm / dcmj2pnm / dcml2pnm (Debian `dcmtk`, `make system-deps`).

Tolerance: grayscale max |diff| <= 1 grey level and mean <= 0.6 (rounding of the last step);
colour max <= 2 and mean <= 1 (YCbCr -> RGB rounding differs by one step per channel).
dcmtk (3.6.7 in Debian) reads neither JPEG 2000 nor segmented palettes, so those files are not
compared; it does cover MONOCHROME1, signed CT with rescale, modality LUT and VOI LUT sequences,
SIGMOID, RLE, deflate, big endian, JPEG lossless, JPEG-LS, JPEG baseline colour and palettes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from huatuo_cli.imaging import load_image
from huatuo_cli.imaging.windows import Window, WindowChoice
from tests.imaging_data import local_file

GRAY = [
    # (tool, file, dcmtk VOI arguments, our window, frame)
    ("dcm2pnm", "CT_small.dcm", ["+Ww", "40", "400"], "40,400", 0),  # signed CT, rescale, padding
    ("dcm2pnm", "693_UNCR.dcm", ["+Ww", "-600", "1500"], "lung", 0),
    ("dcm2pnm", "MR_small.dcm", ["+Ww", "600", "1600"], "600,1600", 0),
    ("dcm2pnm", "MR_small_bigendian.dcm", ["+Ww", "600", "1600"], "600,1600", 0),
    ("dcm2pnm", "MR_small_RLE.dcm", ["+Ww", "600", "1600"], "600,1600", 0),
    ("dcm2pnm", "RG3_UNCR.dcm", ["+Wi", "1"], "auto", 0),  # MONOCHROME1 with the file's window
    ("dcm2pnm", "RG1_UNCI.dcm", ["+Ww", "15000", "30000"], "15000,30000", 0),  # MONOCHROME1
    ("dcm2pnm", "mlut_18.dcm", ["+Ww", "0", "4000"], "0,4000", 0),  # modality LUT sequence
    ("dcm2pnm", "vlut_04.dcm", ["+Wl", "1"], "auto", 0),  # VOI LUT sequence
    ("dcm2pnm", "image_dfl.dcm", ["+Ww", "128", "256"], "128,256", 0),  # deflate
    ("dcm2pnm", "emri_small.dcm", ["+Ww", "200", "400", "+F", "6"], "200,400", 5),  # enhanced MR, frame 6
    ("dcm2pnm", "eCT_Supplemental.dcm", ["+Ww", "40", "400", "+F", "2"], "40,400", 1),  # enhanced CT
    ("dcm2pnm", "MR2_UNCR.dcm", ["+Ww", "1000", "2000"], "1000,2000", 0),
    ("dcmj2pnm", "JPEG-LL.dcm", ["+Ww", "50", "100"], "50,100", 0),  # JPEG lossless, signed
    ("dcmj2pnm", "bad_sequence.dcm", ["+Ww", "40", "350"], "40,350", 0),  # compressed CT
    ("dcmj2pnm", "JPGLosslessP14SV1_1s_1f_8b.dcm", ["+Wi", "1"], "auto", 0),
    ("dcml2pnm", "MR_small_jpeg_ls_lossless.dcm", ["+Ww", "600", "1600"], "600,1600", 0),  # JPEG-LS
    ("dcml2pnm", "emri_small_jpeg_ls_lossless.dcm", ["+Ww", "200", "400", "+F", "3"], "200,400", 2),
]
SIGMOID = WindowChoice("sigmoid", (Window(600, 1600, "SIGMOID"),))
COLOUR = [
    ("dcm2pnm", "SC_rgb.dcm"), ("dcm2pnm", "SC_rgb_16bit.dcm"), ("dcm2pnm", "US1_UNCR.dcm"),
    ("dcm2pnm", "SC_ybr_full_uncompressed.dcm"), ("dcm2pnm", "SC_rgb_rle.dcm"),
    ("dcm2pnm", "OBXXXX1A.dcm"), ("dcm2pnm", "OT-PAL-8-face.dcm"), ("dcm2pnm", "examples_palette.dcm"),
    ("dcmj2pnm", "SC_rgb_jpeg_dcmtk.dcm"), ("dcmj2pnm", "SC_rgb_dcmtk_+eb+cy+s2.dcm"),
    ("dcmj2pnm", "SC_rgb_jpeg_gdcm.dcm"), ("dcml2pnm", "SC_rgb_jls_lossy_sample.dcm"),
]


def _dcmtk(tool: str, path: Path, args: list[str], tmp_path: Path) -> np.ndarray:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} (dcmtk) is not installed: run `make system-deps` (apt-get install dcmtk)")
    out = tmp_path / f"{path.stem}.pnm"
    proc = subprocess.run([tool, *args, str(path), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0 and out.exists(), proc.stderr
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("tool,name,args,window,frame", GRAY, ids=[g[1] for g in GRAY])
def test_grayscale_matches_dcmtk(tool, name, args, window, frame, tmp_path):
    path = local_file(name)
    reference = _dcmtk(tool, path, args, tmp_path)
    ours = np.asarray(load_image(path, window=window, frame=frame).frames[0], dtype=np.int16)
    diff = np.abs(reference - ours)
    assert reference.std() > 5  # a blank reference would prove nothing
    assert diff.max() <= 1 and diff.mean() <= 0.6, (diff.max(), diff.mean())


def test_sigmoid_matches_dcmtk(tmp_path):
    path = local_file("MR_small.dcm")
    reference = _dcmtk("dcm2pnm", path, ["+Ww", "600", "1600", "+Wfs"], tmp_path)
    ours = np.asarray(load_image(path, window=SIGMOID).frames[0], dtype=np.int16)
    diff = np.abs(reference - ours)
    assert diff.max() <= 1 and diff.mean() <= 0.6, (diff.max(), diff.mean())


@pytest.mark.parametrize("tool,name", COLOUR, ids=[c[1] for c in COLOUR])
def test_colour_matches_dcmtk(tool, name, tmp_path):
    path = local_file(name)
    reference = _dcmtk(tool, path, [], tmp_path)
    ours = np.asarray(load_image(path).frames[0], dtype=np.int16)
    diff = np.abs(reference - ours)
    assert diff.max() <= 2 and diff.mean() <= 1.0, (diff.max(), diff.mean())
