"""A request's images, rendered exactly as `huatuo ask` renders the same files.

The decoded bytes are written to an owner-only temporary folder (in memory, /dev/shm, where there
is one) and read by `answering.inputs.inputs_from_paths`, the function `ask` uses: the same scan,
representative frames, window defaults and checks. The folder is removed as soon as the images are
decoded; no path or file name reaches a message (errors name the image by its position).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huatuo_cli.answering.inputs import inputs_from_paths
from huatuo_cli.answering.jobs import StudyInputs
from huatuo_cli.engine.prompt import MAX_IMAGES
from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging.frames import parse_frame
from huatuo_cli.imaging.windows import parse_window
from huatuo_cli.privacy import FILE_MODE, scrub
from huatuo_cli.serve.protocol import IMAGE_TYPES, ApiError, ImagePart, bad_request


def _scratch_root() -> str | None:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def parse_options(window: str | None, frame: str | None) -> tuple[object, object]:
    """The window and frame extension fields, parsed as `--window`/`--frame` are (400 when wrong)."""
    try:
        parsed_window = parse_window(window)
    except HuatuoError as exc:
        raise bad_request(f"window: {str(exc).splitlines()[0]}", param="window", code="invalid_window") from None
    try:
        parsed_frame = None if frame is None else parse_frame(frame)
    except HuatuoError as exc:
        raise bad_request(f"frame: {str(exc).splitlines()[0]}", param="frame", code="invalid_frame") from None
    return parsed_window, parsed_frame


def render_images(parts: Sequence[ImagePart], *, window: str | None = None, frame: str | None = None,
                  limit: int = MAX_IMAGES) -> tuple[str | None, StudyInputs]:
    """(audit id, decoded inputs) of a request's images; ApiError 400 for an image that cannot be used."""
    parsed_window, parsed_frame = parse_options(window, frame)
    if not parts:
        return None, StudyInputs(images=[], inputs=[], window=None)
    folder = tempfile.mkdtemp(prefix="huatuo-serve-", dir=_scratch_root())  # mode 0700
    try:
        paths = []
        for i, part in enumerate(parts, 1):
            path = Path(folder) / f"image{i}{IMAGE_TYPES[part.mime]}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                out.write(part.data)
            paths.append(path)
        try:
            _study_key, audit_id, inputs = inputs_from_paths(paths, window=parsed_window,  # type: ignore[arg-type]
                                                              frame=parsed_frame, images=limit)  # type: ignore[arg-type]
        except HuatuoError as exc:
            raise _image_error(exc, folder) from None
        if audit_id and folder in audit_id:  # a DICOM file without a StudyInstanceUID: its temporary folder
            audit_id = "+".join(inputs.inputs)
        return audit_id, inputs
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _image_error(exc: HuatuoError, folder: str) -> ApiError:
    message = str(exc).splitlines()[0].replace(folder, "<image>")
    message = re.sub(r"\bargument (\d+)\b", r"image \1", message)
    code = "too_many_images" if "images" in message and ("more than" in message or "at most" in message) else "invalid_image"
    return bad_request(scrub(message) if "/" in message else message, param="messages", code=code)
