"""From paths on disk to what the model sees: the one place where `ask` and `batch` meet imaging.

A study becomes at most `MAX_IMAGES` images: representatives of its series (middle slice plus
evenly spaced ones, localizers skipped), shared out over the series. Every input is named by
content hash and by the PHI-free keys of the scan; UIDs and paths stay inside `Job` for the audit
hash and the SR references and are never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from huatuo_cli.batch.runner import BadFile, FileFailure, Job, StudyInputs
from huatuo_cli.bundle import sha256_file
from huatuo_cli.errors import HuatuoError, is_data_failure
from huatuo_cli.prompt import MAX_IMAGES


def pick_representatives(series_list: Sequence[Any], limit: int = MAX_IMAGES, frame: Any = None) -> list:
    """Representatives of several series, shared out so each series shows up, `limit` in all.

    With an explicit `frame` each instance is picked once (the frame is the user's choice).
    """
    series_list = [s for s in series_list if s.stacks]
    if not series_list:
        return []
    per = max(1, limit // len(series_list))
    picks = [rep for s in series_list for rep in s.representatives(per, one_per_instance=frame is not None)]
    return picks[:limit]


def render(reps: Sequence[Any], *, window: Any, frame: Any, limit: int = MAX_IMAGES) -> StudyInputs:
    """Decode the chosen images (imaging's viewer pipeline). Raises FileFailure for a bad image.

    Each file is read and hashed once, however many of its frames are representatives. A file that
    cannot be decoded is replaced by another copy of the same image (same SOP Instance UID) when
    the folder holds one; otherwise the failure names the file (for errors.jsonl, owner-only).
    """
    images, hashes, windows = [], [], []
    by_path: dict[Path, list] = {}
    for rep in reps:
        by_path.setdefault(rep.instance.path, []).append(rep)
    for path, path_reps in by_path.items():
        used, rendered_list = _render_any_copy(path, path_reps, window=window, frame=frame)
        for rendered in rendered_list:
            images.extend(rendered.frames)
            if rendered.meta and rendered.meta.window not in windows:
                windows.append(rendered.meta.window)
        hashes.append(sha256_file(used))
    if len(images) > limit:
        raise HuatuoError(f"{len(images)} images selected; HuatuoGPT-Vision takes at most {limit}",
                          hint="pick one frame with --frame, or fewer files")
    return StudyInputs(images=images, inputs=hashes, window="; ".join(windows) or getattr(window, "text", str(window)))


def _render_any_copy(path: Path, reps: list, *, window: Any, frame: Any) -> tuple[Path, list]:
    """Render `reps` from `path`, or from the first copy of the same instance that decodes."""
    instance = reps[0].instance
    first_error: HuatuoError | None = None
    for candidate in [path, *getattr(instance, "copies", [])]:
        try:
            return candidate, _render_file(candidate, reps, kind=instance.kind, window=window, frame=frame)
        except HuatuoError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise FileFailure(first_error, path)


def _render_file(path: Path, reps: list, *, kind: str, window: Any, frame: Any) -> list:
    from huatuo_cli.imaging import load_image, render_dataset
    from huatuo_cli.imaging.dicomio import read_dicom

    try:
        dataset = read_dicom(path) if kind == "dicom" else None
        return [render_dataset(dataset, window=window, frame=rep.frame if frame is None else frame)
                if dataset is not None else
                load_image(path, window=window, frame=rep.frame if frame is None else frame)
                for rep in reps]
    except HuatuoError:
        raise
    except BaseException as exc:  # e.g. Pillow's DecompressionBombError: still this file's failure
        if not is_data_failure(exc):
            raise
        raise HuatuoError(f"cannot decode the image ({type(exc).__name__})") from None


def _dicom_sources(reps: Sequence[Any]) -> list[Path]:
    seen, out = set(), []
    for rep in reps:
        if rep.instance.kind == "dicom" and rep.instance.path not in seen:
            seen.add(rep.instance.path)
            out.append(rep.instance.path)
    return out


def jobs_from_folder(root: Path, *, per: str = "study", window: Any = "auto", frame: Any = None,
                     images: int = MAX_IMAGES) -> list[Job | BadFile]:
    """Scan `root` (headers only) into batch jobs, one per study or per series, and bad files."""
    from huatuo_cli.imaging import scan

    result = scan(root)
    jobs: list[Job | BadFile] = []
    for study in result.studies:
        units = [(study.key, None, study.series)] if per == "study" else \
            [(f"{study.key}/{s.key}", s.key, [s]) for s in study.series]
        for key, series_key, series_list in units:
            reps = pick_representatives(series_list, images, frame)

            def load(reps=reps) -> StudyInputs:
                return render(reps, window=window, frame=frame, limit=images)

            jobs.append(Job(key=key, series=series_key, load=load, sources=_dicom_sources(reps),
                            audit_id=study.uid))
    for skipped in result.skipped:
        jobs.append(BadFile(key=os.path.relpath(skipped.path, root), reason=skipped.reason))
    return jobs


def inputs_from_paths(paths: Sequence[Path], *, window: Any = "auto", frame: Any = None,
                      images: int = MAX_IMAGES) -> tuple[str, str | None, StudyInputs]:
    """`ask`'s inputs: files and/or series folders -> (study key, audit id, decoded inputs).

    A file that is not a usable image is an error here (with its PHI-free reason): the user named it.
    """
    from huatuo_cli.imaging import scan

    reps, keys, uids = [], [], []
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
    return "+".join(keys), "+".join(uids) or None, render(reps, window=window, frame=frame, limit=images)
