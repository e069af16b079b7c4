"""`huatuo batch --from NAME --study UID | --since DATE`: studies fetched by C-GET from a real
Orthanc into the private cache, then the usual batch; with --send the SR goes back into the study."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from huatuo_cli.cli import cli
from huatuo_cli.errors import HuatuoError
from huatuo_cli.send.destination import resolve
from huatuo_cli.send.retrieve import cache_dir, retrieve
from huatuo_cli.send.sender import Sender
from tests.orthanc import Orthanc, configure, running
from tests.send_helpers import batch, phi_of, references, send, studies


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    yield from running(tmp_path)


def uids_of(root: Path) -> dict[str, str]:
    """SOP Instance UID -> Study Instance UID of every file under root."""
    return {str(ds.SOPInstanceUID): str(ds.StudyInstanceUID)
            for ds in (pydicom.dcmread(p) for p in root.rglob("IM*"))}


def test_retrieve_by_study_and_since_then_batch_and_send_back(tmp_path: Path, orthanc: Orthanc) -> None:
    root = studies(tmp_path / "studies", 3)
    assert send(str(root), "--to", orthanc.address)[0] == 0
    wanted = uids_of(root)
    one_study = min(set(wanted.values()))
    got = retrieve(resolve(orthanc.address), studies=[one_study])
    assert (got.studies, got.instances) == (1, 1)
    files = [p for p in got.folder.rglob("*") if p.is_file()]
    assert [str(pydicom.dcmread(p).StudyInstanceUID) for p in files] == [one_study]
    assert got.folder.is_relative_to(cache_dir()) and oct(got.folder.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in files)
    assert all(v not in str(p) for p in files for v in phi_of(root))  # named by hashes
    since = retrieve(resolve(orthanc.address), studies=[], since=dt.date(2000, 1, 1))  # CT_small: 2004
    assert (since.studies, since.instances) == (3, 3)
    retrieved = {str(ds.SOPInstanceUID): str(ds.StudyInstanceUID)
                 for ds in (pydicom.dcmread(p) for p in since.folder.rglob("*.dcm"))}
    assert retrieved == wanted
    # the usual batch on the retrieved folder, its SRs sent back into the source studies
    summary = batch(since.folder, tmp_path / "run", send_sr=Sender(resolve(orthanc.address)).send)
    assert (summary.srs, summary.sent, summary.exit_code) == (3, 3, 0)
    assert len(orthanc.get("/studies")) == 3 and len(orthanc.instance_ids()) == 6
    for sr in (tmp_path / "run" / "sr").glob("*.dcm"):
        ds = pydicom.dcmread(sr)
        assert {wanted[r] for r in references(ds.ContentSequence)} == {ds.StudyInstanceUID}
    with pytest.raises(HuatuoError, match="no study found"):
        retrieve(resolve(orthanc.address), studies=[], since=dt.date(2030, 1, 1))
    with pytest.raises(HuatuoError, match="could not be retrieved"):
        retrieve(resolve(orthanc.address), studies=["1.2.826.0.1.3680043.8.498.1"])


def test_from_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["batch", "--out", str(tmp_path / "o"), "-q", "Q?"]
    for args, message in (([], "give FOLDER or --from PACS"),
                          ([str(tmp_path), "--from", "x", "--study", "1.2"], "give FOLDER or --from PACS"),
                          (["--from", "x"], "--from needs --study"),
                          ([str(tmp_path), "--since", "2026-01-01"], "they need --from")):
        res = runner.invoke(cli, [*base, *args])
        assert res.exit_code == 2 and message in res.stderr, res.output
    res = runner.invoke(cli, [*base, "--from", "https://pacs/dicom-web", "--study", "1.2", "--model", str(tmp_path)])
    assert res.exit_code == 1 and "Traceback" not in res.output


@pytest.mark.slow
def test_batch_from_pacs_end_to_end(tmp_path: Path, orthanc: Orthanc, tiny_bundle: Path) -> None:
    """`huatuo batch --from test --study UID --sr --send test` on the tiny bundle: the PACS's study
    in, its SR back into the same study."""
    root = studies(tmp_path / "studies", 2)
    configure("test", orthanc)
    assert send(str(root), "--to", "test")[0] == 0
    study = min(set(uids_of(root).values()))
    res = CliRunner().invoke(cli, ["batch", "--from", "test", "--study", study, "--out", str(tmp_path / "run"),
                                   "--model", str(tiny_bundle), "-q", "Describe.", "--max-tokens", "4",
                                   "--sr", "--send", "test"])
    assert res.exit_code == 0, res.output
    assert "retrieved 1 instances of 1 studies from test" in res.stderr and "1 SRs sent" in res.stderr
    (instance,) = [i for i in orthanc.instance_ids() if orthanc.get(f"/instances/{i}/simplified-tags")["Modality"] == "SR"]
    assert orthanc.dataset(instance).StudyInstanceUID == study
    assert all(v not in res.output for v in phi_of(root))
