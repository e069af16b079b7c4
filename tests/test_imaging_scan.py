"""Folder scan: grouping into study / series / stacks, slice order, representatives, skipped files.

The folder is built from a real CT file (pydicom's CT_small) copied with new UIDs and headers.
"""

from __future__ import annotations

from huatuo_cli.imaging import scan
from huatuo_cli.imaging.scan import spread
from tests.imaging_data import build_folder, local_file


def test_grouping_order_and_representatives(tmp_path):
    uids = build_folder(tmp_path)
    result = scan(tmp_path)
    dicom = [s for s in result.studies if s.kind == "dicom"]
    images = [s for s in result.studies if s.kind == "images"]
    assert len(dicom) == 1 and dicom[0].uid == uids["study"]
    assert len(images) == 1 and len(images[0].series) == 2  # one series per picture, one study per folder
    series = {s.uid: s for s in dicom[0].series}
    assert set(series) == {uids["axial"], uids["echoes"], uids["nopos"]}

    axial = series[uids["axial"]]
    assert len(axial.stacks) == 2  # axial slices and the localizer (other orientation)
    main = axial.stacks[0]
    assert main.ordered_by == "position" and not main.is_localizer and axial.stacks[1].is_localizer
    z = [i.position[2] for i in main.instances]
    assert z == sorted(z) and len(z) == 9
    assert [i.instance_number for i in main.instances] == uids["numbers"]  # position wins over number
    reps = axial.representatives(3)
    assert [r.instance.position[2] for r in reps] == [2.5, 10.0, 17.5]  # middle (index 4) plus evenly spaced
    assert all(not r.instance.is_localizer for r in reps)
    assert len(axial.representatives(1)) == 1 and axial.representatives(1)[0].instance.position[2] == 10.0
    assert len(axial.representatives(50)) == 9

    echoes = series[uids["echoes"]]
    assert len(echoes.stacks) == 2 and sorted(len(s.instances) for s in echoes.stacks) == [3, 3]
    assert {i.echo_number for i in echoes.stacks[0].instances} in ({"1"}, {"2"})

    nopos = series[uids["nopos"]]
    assert nopos.stacks[0].ordered_by == "instance-number"
    assert [i.instance_number for i in nopos.stacks[0].instances] == [1, 2, 3]

    categories = sorted(s.category for s in result.skipped)
    assert categories == ["not-dicom", "structured-report"]


def test_keys_are_stable_short_and_phi_free(tmp_path):
    uids = build_folder(tmp_path)
    first, second = scan(tmp_path), scan(tmp_path)
    assert [s.key for s in first.studies] == [s.key for s in second.studies]
    assert [s.key for s in first.series] == [s.key for s in second.series]
    for key in [s.key for s in first.studies] + [s.key for s in first.series]:
        assert len(key) == 12 and int(key, 16) >= 0
    assert scan(tmp_path, key_salt="site-a").studies[0].key != first.studies[0].key
    text = repr(first)
    for uid in (uids["study"], uids["axial"], str(tmp_path)):
        assert uid not in text
    instance = first.series[0].instances[0]
    assert instance.sop_instance_uid and instance.sop_class_uid and instance.path.exists()


def test_multiframe_series_picks_frames():
    result = scan(local_file("emri_small.dcm"))
    (series,) = result.series
    assert [r.frame for r in series.representatives(3)] == [1, 5, 8]
    assert [r.frame for r in series.representatives(1)] == [5]


def test_spread_includes_middle():
    for n in range(1, 40):
        for k in range(1, 8):
            picks = spread(n, k)
            assert n // 2 in picks and len(picks) == min(n, k) and picks == sorted(set(picks))
