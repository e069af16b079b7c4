"""Imaging speed: render per 512x512 CT slice (plain and compressed) and scan+group of 1,000 files.

Each figure is printed next to plain pydicom measured in the same run (`dcmread` + `pixel_array`
for rendering; `dcmread(stop_before_pixels=True)` over the same files for the scan), as a ratio.
Run: PYTHONPATH=$PWD python bench/bench_imaging.py
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pydicom
from _common import median_seconds
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from huatuo_cli.imaging import load_image, scan

warnings.simplefilter("ignore")


def render_rows() -> None:
    cases = [
        ("CT 512x512 uncompressed", "693_UNCR.dcm"),
        ("CT 512x512 JPEG 2000 lossless", "693_J2KR.dcm"),
        ("CT 512x512 JPEG lossless", "bad_sequence.dcm"),
        ("CR 1760x1760 MONOCHROME1", "RG3_UNCR.dcm"),
    ]
    print(f"{'render (per slice)':34s} {'huatuo':>10s} {'pydicom':>10s} {'ratio':>6s}")
    for label, name in cases:
        path = get_testdata_file(name, download=False)
        ours = median_seconds(lambda path=path: load_image(path, window="40,400"), 15)
        base = median_seconds(lambda path=path: pydicom.dcmread(path).pixel_array, 15)
        print(f"{label:34s} {ours * 1e3:8.1f}ms {base * 1e3:8.1f}ms {ours / base:6.2f}")


def make_folder(root: Path, n: int = 1000) -> None:
    """n copies of a real 512x512 CT slice: 10 series of n/10 slices, new UIDs, shuffled names."""
    src = pydicom.dcmread(get_testdata_file("693_UNCR.dcm", download=False))
    study = generate_uid()
    per = n // 10
    for s in range(10):
        series = generate_uid()
        folder = root / f"s{s}"
        folder.mkdir(parents=True)
        for i in range(per):
            ds = src.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = per - i
            ds.ImagePositionPatient = [0.0, 0.0, float(i)]
            ds.save_as(folder / f"{(i * 7919) % per:05d}")


def scan_rows() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root)
        files = [Path(d) / f for d, _, fs in os.walk(root) for f in fs]
        result = scan(root)
        assert len(result.series) == 10 and not result.skipped
        ours = median_seconds(lambda: scan(root), 3)
        headers = median_seconds(lambda: [pydicom.dcmread(f, stop_before_pixels=True) for f in files], 3)
        full = median_seconds(lambda: [pydicom.dcmread(f).pixel_array for f in files], 1)
        print(f"\nscan+group {len(files)} files (512x512 CT, 10 series)")
        print(f"  huatuo scan                        {ours:7.2f}s")
        print(f"  pydicom dcmread headers only       {headers:7.2f}s   ratio {ours / headers:5.2f}")
        print(f"  pydicom dcmread + pixel_array      {full:7.2f}s   ratio {ours / full:5.2f}")


if __name__ == "__main__":
    render_rows()
    scan_rows()
