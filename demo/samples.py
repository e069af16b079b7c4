"""Sample scans for the demo: real DICOM test files that ship inside pydicom.

`make demo` needs a scan and a small folder of studies on a machine with no data of its own and
no network; pydicom's wheel carries real CT, MR and secondary-capture files for that.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

#: pydicom test files used as the demo's studies (each is its own study)
SAMPLE_FILES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm")


def sample_file(name: str = SAMPLE_FILES[0]) -> Path:
    """Path of a pydicom test file, never downloaded."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom does not ship {name}")
    return Path(path)


def write_sample_studies(dest: Path) -> Path:
    """A folder of studies as a PACS export looks: nested folders, files without extension."""
    dest = Path(dest)
    for i, name in enumerate(SAMPLE_FILES):
        folder = dest / f"export{i % 2}" / f"study{i}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_file(name), folder / f"IM{i:04d}")
    return dest


def main(argv: list[str]) -> None:
    """`python -m demo.samples scan` prints a sample scan's path; `studies DEST` writes a folder."""
    if argv[:1] == ["scan"]:
        print(sample_file())
    elif argv[:1] == ["studies"] and len(argv) == 2:
        print(write_sample_studies(Path(argv[1])))
    else:
        sys.exit("usage: python -m demo.samples scan | studies DEST")


if __name__ == "__main__":
    main(sys.argv[1:])
