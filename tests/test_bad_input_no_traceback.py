"""Bad input the scan meets in the wild is a clear, PHI-free error, never a traceback."""

from __future__ import annotations

import pydicom
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from huatuo_cli.batch.sr import AnsweredImages, SeenImage, build_sr
from huatuo_cli.cli import cli

CT = get_testdata_file("CT_small.dcm", download=False)


def no_traceback(res) -> None:
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception


def test_broken_symlink_and_invalid_header_value(tmp_path):
    folder = tmp_path / "DOE_JOHN"  # folder names in exports often carry patient names
    folder.mkdir()
    (folder / "IM1").symlink_to(tmp_path / "gone")
    ds = pydicom.dcmread(CT)
    ds[0x00281053] = pydicom.DataElement(0x00281053, "LO", "ab")  # RescaleSlope that is not a number
    ds.save_as(folder / "IM2")
    res = CliRunner().invoke(cli, ["inspect", str(folder)])
    no_traceback(res)
    assert "DOE_JOHN" not in res.output
    res = CliRunner().invoke(cli, ["inspect", str(folder / "IM2")])
    no_traceback(res)
    assert res.exit_code == 1 and "corrupt header: an image attribute has an invalid value" in res.output
    assert "ab" not in res.output.split("corrupt header")[1][:60]


def test_sr_references_a_file_without_preamble(tmp_path):
    whole = open(CT, "rb").read()
    assert whole[128:132] == b"DICM"
    stripped = tmp_path / "no-preamble"
    stripped.write_bytes(whole[132:])  # as some old archives store them: no preamble, no "DICM"
    sr = build_sr([AnsweredImages([{"question": "q", "answer": "a"}], [SeenImage(stripped)])])
    assert sr.SOPClassUID and sr.ContentSequence


def test_questions_file_that_is_not_utf8_is_a_usage_error(tmp_path):
    questions = tmp_path / "q.txt"
    questions.write_bytes("有胸腔积液吗？\n".encode("gbk"))
    res = CliRunner().invoke(cli, ["batch", str(tmp_path), "--out", str(tmp_path / "o"), "--questions", str(questions)])
    no_traceback(res)
    assert res.exit_code == 2 and "UTF-8" in res.output
