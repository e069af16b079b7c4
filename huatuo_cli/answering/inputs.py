"""From paths on disk to what the model sees: the one place where `ask` and `batch` meet imaging.

A study becomes at most `MAX_IMAGES` images: representatives of its series (middle slice plus
evenly spaced ones, localizers skipped), shared out over the series. Every input is named by
content hash and by the PHI-free keys of the scan; UIDs and paths stay inside `Job` for the audit
hash and the SR references and are never printed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from huatuo_cli.answering.jobs import BadFile, FileFailure, Job, StudyInputs
from huatuo_cli.bundles.bundle import sha256_file
from huatuo_cli.engine.prompt import MAX_IMAGES
from huatuo_cli.errors import HuatuoError, is_data_failure

if TYPE_CHECKING:
    import numpy as np

    from huatuo_cli.imaging import FrameChoice, Representative, Series, WindowChoice
    from huatuo_cli.imaging.load import ImageMeta, RenderedImage


def pick_representatives(series_list: Sequence[Series], limit: int = MAX_IMAGES,
                         frame: FrameChoice | None = None) -> list[Representative]:
    """Representatives of several series, shared out so each series shows up, `limit` in all.

    With an explicit `frame` each instance is picked once (the frame is the user's choice).
    """
    series_list = [s for s in series_list if s.stacks]
    if not series_list:
        return []
    per = max(1, limit // len(series_list))
    picks = [rep for s in series_list for rep in s.representatives(per, one_per_instance=frame is not None)]
    return picks[:limit]


def render(reps: Sequence[Representative], *, window: WindowChoice | str, frame: FrameChoice | None,
           limit: int = MAX_IMAGES, overlays: str = "preview") -> StudyInputs:
    """Decode the chosen images (imaging's viewer pipeline). Raises FileFailure for a bad image.

    Each file is read and hashed once, however many of its frames are representatives. A file that
    cannot be decoded is replaced by another copy of the same image (same SOP Instance UID) when
    the folder holds one; otherwise the failure names the file (for errors.jsonl, owner-only).
    Overlay planes come back beside the images (for thumbnails) and are drawn into them only with
    `overlays="model"` (imaging.overlays).
    """
    images: list[Image.Image] = []
    hashes: list[str] = []
    windows: list[str] = []
    by_path: dict[Path, list[Representative]] = {}
    metas: list[ImageMeta] = []
    masks: list[np.ndarray | None] = []
    for rep in reps:
        by_path.setdefault(rep.instance.path, []).append(rep)
    for path, path_reps in by_path.items():
        used, rendered_list = _render_any_copy(path, path_reps, window=window, frame=frame, overlays=overlays)
        for rendered in rendered_list:
            images.extend(rendered.frames)
            if rendered.meta is not None:
                metas.extend([rendered.meta] * len(rendered.frames))
            masks.extend(rendered.overlays or [None] * len(rendered.frames))
            if rendered.meta and rendered.meta.window not in windows:
                windows.append(rendered.meta.window)
        hashes.append(sha256_file(used))
    if len(images) > limit:
        raise HuatuoError(f"{len(images)} images selected; HuatuoGPT-Vision takes at most {limit}",
                          hint="pick one frame with --frame, or fewer files")
    return StudyInputs(images=images, inputs=hashes, window="; ".join(windows) or getattr(window, "text", str(window)),
                       metas=metas, overlays=masks)


def _render_any_copy(path: Path, reps: list[Representative], *, window: WindowChoice | str, frame: FrameChoice | None,
                     overlays: str) -> tuple[Path, list[RenderedImage]]:
    """Render `reps` from `path`, or from the first copy of the same instance that decodes."""
    instance = reps[0].instance
    first_error: HuatuoError | None = None
    for candidate in [path, *getattr(instance, "copies", [])]:
        try:
            return candidate, _render_file(candidate, reps, kind=instance.kind, window=window, frame=frame,
                                           overlays=overlays)
        except HuatuoError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise FileFailure(first_error, path)


def _render_file(path: Path, reps: list[Representative], *, kind: str, window: WindowChoice | str,
                 frame: FrameChoice | None, overlays: str) -> list[RenderedImage]:
    from huatuo_cli.imaging import load_image, render_dataset
    from huatuo_cli.imaging.dicomio import read_dicom

    try:
        dataset = read_dicom(path) if kind == "dicom" else None
        return [render_dataset(dataset, window=window, frame=rep.frame if frame is None else frame, overlays=overlays)
                if dataset is not None else
                load_image(path, window=window, frame=rep.frame if frame is None else frame, overlays=overlays)
                for rep in reps]
    except HuatuoError:
        raise
    except BaseException as exc:  # e.g. Pillow's DecompressionBombError: still this file's failure
        if not is_data_failure(exc):
            raise
        raise HuatuoError(f"cannot decode the image ({type(exc).__name__})") from None


def _dicom_sources(reps: Sequence[Representative]) -> list[Path]:
    seen: set[Path] = set()
    out: list[Path] = []
    for rep in reps:
        if rep.instance.kind == "dicom" and rep.instance.path not in seen:
            seen.add(rep.instance.path)
            out.append(rep.instance.path)
    return out


def _frames_seen(reps: Sequence[Representative], frame: FrameChoice | None) -> dict[Path, tuple[int, ...]]:
    """0-based frames of each DICOM source the model is shown, as `render` will pick them."""
    seen: dict[Path, list[int]] = {}
    for rep in reps:
        if rep.instance.kind != "dicom":
            continue
        n = rep.instance.number_of_frames
        chosen = rep.frame if frame is None else frame
        frames = list(range(n)) if chosen == "all" else [n // 2 if chosen == "mid" else int(chosen)]
        seen.setdefault(rep.instance.path, []).extend(frames)
    return {path: tuple(sorted(set(frames))) for path, frames in seen.items()}


def jobs_from_folder(root: Path, *, per: str = "study", window: WindowChoice | str = "auto",
                     frame: FrameChoice | None = None,
                     images: int = MAX_IMAGES, overlays: str = "preview") -> list[Job | BadFile]:
    """Scan `root` (headers only) into batch jobs, one per study or per series, and bad files."""
    from huatuo_cli.imaging import scan

    result = scan(root)
    jobs: list[Job | BadFile] = []
    for study in result.studies:
        units = [(study.key, None, study.series)] if per == "study" else \
            [(f"{study.key}/{s.key}", s.key, [s]) for s in study.series]
        for key, series_key, series_list in units:
            reps = pick_representatives(series_list, images, frame)

            def load(reps: list[Representative] = reps) -> StudyInputs:
                return render(reps, window=window, frame=frame, limit=images, overlays=overlays)

            jobs.append(Job(key=key, series=series_key, load=load, sources=_dicom_sources(reps),
                            audit_id=study.uid, frames=_frames_seen(reps, frame), study=study.key))
    for skipped in result.skipped:
        jobs.append(BadFile(key=os.path.relpath(skipped.path, root), reason=skipped.reason))
    return jobs


def inputs_from_paths(paths: Sequence[Path], *, window: WindowChoice | str = "auto", frame: FrameChoice | None = None,
                      images: int = MAX_IMAGES, overlays: str = "preview") -> tuple[str, str | None, StudyInputs]:
    """`ask`'s inputs: files and/or series folders -> (study key, audit id, decoded inputs).

    A file that is not a usable image is an error here (with its PHI-free reason): the user named it.
    """
    from huatuo_cli.imaging import scan

    reps: list[Representative] = []
    keys: list[str] = []
    uids: list[str] = []
    for path in paths:
        result = scan(path)
        if result.skipped and Path(path).is_file():
            raise HuatuoError(f"argument {list(paths).index(path) + 1} cannot be used: {result.skipped[0].reason}")
        series = [s for study in result.studies for s in study.series]
        if not series:
            raise HuatuoError(f"argument {list(paths).index(path) + 1} holds no usable image")
        budget = images - len(reps)
        if budget <= 0:
            raise HuatuoError(f"more than {images} images given", hint=f"HuatuoGPT-Vision takes at most {MAX_IMAGES}; "
                              "see --images")
        reps.extend(pick_representatives(series, budget, frame))
        for study in result.studies:
            if study.key not in keys:
                keys.append(study.key)
                uids.append(study.uid)
    return "+".join(keys), "+".join(uids) or None, render(reps, window=window, frame=frame, limit=images,
                                                          overlays=overlays)
