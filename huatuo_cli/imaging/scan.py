"""Walk a folder, read headers only, and group what is there into studies, series and stacks.

A hospital export mixes studies, series, localizers, reports and junk in arbitrary folders
under arbitrary names. Grouping therefore uses the UIDs in the headers, never the folder
layout (PS3.3 C.7.6.2): Study -> Series -> stacks of one orientation / acquisition / echo /
temporal position, each ordered by position along the slice normal (InstanceNumber can run
against position), InstanceNumber as the fallback. Plain PNG/JPEG/TIFF files in one folder
form a study of their own. Keys are truncated SHA-256 hashes, stable across runs, so batch
runs can resume and report without printing a UID; the UIDs and paths stay in memory only
(a DICOM SR must reference its source images) and are excluded from `repr`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging.dicomio import is_dicom_file, not_an_image, read_dicom, read_head
from huatuo_cli.imaging.frames import number_of_frames
from huatuo_cli.imaging.load import code_string
from huatuo_cli.imaging.reject import Rejected, check_header, check_transfer_syntax, header_failure, short_syntax_name

KEY_LENGTH = 12


def uid_key(kind: str, uid: str, salt: str = "") -> str:
    """A stable, PHI-free key for a study/series UID (or a stand-in for plain images)."""
    return hashlib.sha256(f"{salt}{kind}:{uid}".encode()).hexdigest()[:KEY_LENGTH]


@dataclass
class Instance:
    """One file: a DICOM image (possibly multi-frame) or a plain image."""

    path: Path = field(repr=False)
    kind: str  # "dicom" or "image"
    sop_class_uid: str = field(default="", repr=False)
    sop_instance_uid: str = field(default="", repr=False)
    modality: str = ""
    body_part: str = ""  # BodyPartExamined, a sanitised code string ("CHEST")
    rows: int = 0
    columns: int = 0
    number_of_frames: int = 1
    transfer_syntax: str = ""  # short name, e.g. "JPEG 2000 lossless"; the format for plain images
    instance_number: int | None = None
    position: tuple[float, ...] | None = None  # ImagePositionPatient (3 values)
    orientation: tuple[float, ...] | None = None  # ImageOrientationPatient (6 values)
    acquisition_number: str = ""
    echo_number: str = ""
    temporal_position: str = ""
    is_localizer: bool = False
    #: other files holding the same SOP Instance UID: tried in order when this one cannot be decoded
    copies: list[Path] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class Representative:
    """An image chosen to show the model: one frame of one instance."""

    instance: Instance
    frame: int  # 0-based


@dataclass
class Stack:
    """Instances sharing orientation, acquisition, echo and temporal position, in slice order."""

    instances: list[Instance]
    ordered_by: str  # "position" (along the slice normal) or "instance-number"

    @property
    def is_localizer(self) -> bool:
        return all(i.is_localizer for i in self.instances)


@dataclass
class Series:
    """A DICOM series (or one plain image). `key` is safe to print; `uid` is not."""

    key: str
    uid: str = field(repr=False)
    modality: str = ""
    number: int | None = None  # SeriesNumber (not PHI; what a radiologist calls "series 3")
    stacks: list[Stack] = field(default_factory=list)

    @property
    def instances(self) -> list[Instance]:
        return [i for s in self.stacks for i in s.instances]

    @property
    def number_of_frames(self) -> int:
        return sum(i.number_of_frames for i in self.instances)

    @property
    def body_part(self) -> str:
        """The first BodyPartExamined of its instances ("" when none says)."""
        return next((i.body_part for i in self.instances if i.body_part), "")

    def representatives(self, count: int = 3, *, one_per_instance: bool = False) -> list[Representative]:
        """Middle image plus evenly spaced ones of the main (largest non-localizer) stack.

        A single multi-frame instance gives evenly spaced frames instead of instances, unless
        `one_per_instance` (the caller picks the frame itself, e.g. `--frame 0`: repeating the
        instance would send the same image several times).
        """
        if count < 1 or not self.stacks:
            return []
        candidates = [s for s in self.stacks if not s.is_localizer] or self.stacks
        main = max(candidates, key=lambda s: (len(s.instances), sum(i.number_of_frames for i in s.instances)))
        if len(main.instances) == 1 and one_per_instance:
            return [Representative(main.instances[0], main.instances[0].number_of_frames // 2)]
        if len(main.instances) == 1:
            only = main.instances[0]
            return [Representative(only, f) for f in spread(only.number_of_frames, count)]
        return [
            Representative(main.instances[i], main.instances[i].number_of_frames // 2)
            for i in spread(len(main.instances), count)
        ]


@dataclass
class Study:
    """A DICOM study, or the plain images of one folder. `key` is safe to print; `uid` is not."""

    key: str
    uid: str = field(repr=False)
    kind: str = "dicom"  # "dicom" or "images"
    series: list[Series] = field(default_factory=list)


class Skipped(NamedTuple):
    """A file the scan could not use: its path (never print it), a PHI-free reason, a category."""

    path: Path
    reason: str
    category: str

    def __repr__(self) -> str:  # the path may name the patient
        return f"Skipped(reason={self.reason!r}, category={self.category!r})"


@dataclass
class ScanResult:
    studies: list[Study]
    skipped: list[Skipped]

    @property
    def series(self) -> list[Series]:
        return [s for st in self.studies for s in st.series]


def spread(n: int, count: int) -> list[int]:
    """`count` evenly spaced indices in range(n), always including the middle n // 2."""
    if count >= n:
        return list(range(n))
    picks = sorted({min(n - 1, round((i + 0.5) * n / count - 0.5)) for i in range(count)})
    middle = n // 2
    if middle not in picks:
        nearest = min(picks, key=lambda p: abs(p - middle))
        picks = sorted(set(picks) - {nearest} | {middle})
    return picks


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _dicom_instance(path: Path) -> tuple[Instance, str, str, int | None]:
    """Header-only read -> (instance, study uid, series uid, series number); raises Rejected."""
    ds = read_dicom(path, headers_only=True)
    check_header(ds)
    if ds.get("Rows") in (None, "") or ds.get("Columns") in (None, ""):
        raise Rejected("no-pixel-data", "not an image: the DICOM file has no image (no Rows/Columns)")
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    check_transfer_syntax(ts)
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    instance = Instance(
        path=path,
        kind="dicom",
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        modality=str(ds.get("Modality", "") or ""),
        body_part=code_string(ds.get("BodyPartExamined")),
        rows=_int(ds.Rows) or 0,
        columns=_int(ds.Columns) or 0,
        number_of_frames=number_of_frames(ds),
        transfer_syntax=short_syntax_name(ts),
        instance_number=_int(ds.get("InstanceNumber")),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        acquisition_number=str(ds.get("AcquisitionNumber", "") or ""),
        echo_number=str(ds.get("EchoNumbers", "") or ""),
        temporal_position=str(ds.get("TemporalPositionIdentifier", "") or ""),
        is_localizer="LOCALIZER" in image_type,
    )
    study_uid = str(ds.get("StudyInstanceUID", "") or f"no-study-uid:{path.parent}")
    series_uid = str(ds.get("SeriesInstanceUID", "") or f"no-series-uid:{study_uid}")
    return instance, study_uid, series_uid, _int(ds.get("SeriesNumber"))


def _plain_instance(path: Path) -> Instance:
    try:
        with Image.open(path) as image:  # reads the header only
            fmt, width, height = (image.format or "image"), image.width, image.height
            frames = getattr(image, "n_frames", 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise not_an_image(read_head(path, 8)) from None
    return Instance(path=path, kind="image", rows=height, columns=width, number_of_frames=frames,
                    transfer_syntax=fmt.upper())


def _folder_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the folder `path` resolves to; None when it cannot be stat-ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _files(root: Path) -> tuple[list[Path], list[Skipped]]:
    """Regular files under root in a stable order, and the folders that could not be listed.

    Nothing is left out silently: hidden files and folders are read like any other (a `.DS_Store`
    becomes a "not a DICOM file" line, a hidden study is a study), study folders that are symbolic
    links are followed (each real folder once, so a link back up the tree cannot loop), and a
    folder that cannot be listed is returned as skipped with the reason.
    """
    if not root.is_dir():
        return [root], []
    out: list[Path] = []
    unreadable: list[Skipped] = []
    seen = {identity for identity in [_folder_identity(os.fspath(root))] if identity is not None}

    def listing_failed(error: OSError) -> None:
        reason = error.strerror or type(error).__name__
        unreadable.append(Skipped(Path(error.filename or root), f"unreadable folder: cannot list it ({reason})",
                                  "unreadable-folder"))

    for folder, dirs, names in os.walk(root, onerror=listing_failed, followlinks=True):
        kept = []
        for name in sorted(dirs):
            identity = _folder_identity(os.path.join(folder, name))
            if identity is not None:
                if identity in seen:
                    continue  # reached before (a symlink loop, or two links to one folder): read once
                seen.add(identity)
            kept.append(name)
        dirs[:] = kept
        out.extend(Path(folder) / n for n in sorted(names))
    return out, unreadable


def _stack_key(i: Instance) -> tuple[Any, ...]:
    orientation = tuple(round(v, 3) for v in i.orientation) if i.orientation else None
    return (orientation, i.acquisition_number, i.echo_number, i.temporal_position)


def order_stack(instances: list[Instance]) -> Stack:
    """Order by position along the slice normal when every instance has one, else InstanceNumber."""
    def by_number(i: Instance) -> tuple[bool, int, str]:
        return (i.instance_number is None, i.instance_number or 0, i.path.name)

    if instances and all(i.position and i.orientation for i in instances):
        o = np.array(instances[0].orientation)
        normal = np.cross(o[:3], o[3:])
        if np.linalg.norm(normal) > 0.5:
            ranked = sorted(instances, key=lambda i: (float(np.dot(np.asarray(i.position), normal)), by_number(i)))
            return Stack(ranked, "position")
    return Stack(sorted(instances, key=by_number), "instance-number")


def scan(path: str | Path, *, key_salt: str = "") -> ScanResult:
    """Scan a file or folder (recursively, headers only) into studies -> series -> stacks.

    Unusable files are returned in `skipped`, not raised; a missing path raises HuatuoError.
    """
    root = Path(path)
    if not root.exists():
        raise HuatuoError("no such file or folder")
    studies: dict[str, Study] = {}
    series_members: dict[tuple[str, str], list[Instance]] = {}
    series_info: dict[tuple[str, str], tuple[str, int | None]] = {}
    base = root if root.is_dir() else root.parent
    seen_sop: dict[str, Instance] = {}
    files, skipped = _files(root)
    for file in files:
        try:
            if is_dicom_file(file):
                instance, study_uid, series_uid, series_number = _dicom_instance(file)
                kind = "dicom"
            else:
                instance = _plain_instance(file)
                rel = file.relative_to(base).as_posix()
                study_uid, series_uid, series_number = f"images:{Path(rel).parent}", f"image:{rel}", None
                kind = "images"
        except Rejected as exc:
            skipped.append(Skipped(file, exc.reason, exc.category))
            continue
        except Exception as exc:  # a header pydicom reads lazily can still fail here (unknown VR, ...)
            failure = header_failure(exc)
            skipped.append(Skipped(file, failure.reason, failure.category))
            continue
        if instance.sop_instance_uid:
            first = seen_sop.get(instance.sop_instance_uid)
            if first is not None:  # kept as a spare: a damaged first copy must not lose the image
                first.copies.append(file)
                skipped.append(Skipped(file, "duplicate: another file holds the same image (SOP Instance UID); "
                                             "used only if that one cannot be decoded", "duplicate"))
                continue
            seen_sop[instance.sop_instance_uid] = instance
        if study_uid not in studies:
            studies[study_uid] = Study(key=uid_key("study", study_uid, key_salt), uid=study_uid, kind=kind)
        series_members.setdefault((study_uid, series_uid), []).append(instance)
        series_info.setdefault((study_uid, series_uid), (instance.modality, series_number))
    for (study_uid, series_uid), members in series_members.items():
        groups: dict[tuple[Any, ...], list[Instance]] = {}
        for instance in members:
            groups.setdefault(_stack_key(instance), []).append(instance)
        stacks = [order_stack(g) for g in groups.values()]
        stacks.sort(key=lambda s: (s.is_localizer, -len(s.instances)))
        modality, number = series_info[(study_uid, series_uid)]
        studies[study_uid].series.append(
            Series(key=uid_key("series", series_uid, key_salt), uid=series_uid, modality=modality,
                   number=number, stacks=stacks)
        )
    for study in studies.values():
        study.series.sort(key=lambda s: (s.number is None, s.number or 0, s.key))
    return ScanResult(studies=list(studies.values()), skipped=skipped)
