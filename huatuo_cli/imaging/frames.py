"""Which frames of a multi-frame object to show, and which attributes apply to one frame.

pydicom applies rescale and window only from top-level attributes; an enhanced multi-frame
object (enhanced CT/MR/XA...) carries them in the Shared and Per-frame Functional Groups
instead, possibly different per frame. `frame_view` flattens what applies to one frame into a
small Dataset that pydicom's `apply_modality_lut` / `apply_voi` understand.
"""

from __future__ import annotations

from typing import Literal, Union

from pydicom.dataset import Dataset

from huatuo_cli.errors import HuatuoError

FrameChoice = Union[int, Literal["mid", "all"]]

#: top-level attributes the grayscale pipeline reads
_IMAGE_LEVEL = (
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PixelPaddingValue", "PixelPaddingRangeLimit", "ModalityLUTSequence",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "VOILUTSequence", "WindowCenter",
    "WindowWidth", "VOILUTFunction", "PresentationLUTShape", "Modality",
)
#: functional group sequence -> attributes of its item copied into the view
_GROUP_ATTRS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"),
}


def parse_frame(value: FrameChoice | str) -> FrameChoice:
    """Parse a frame option: a 0-based index, `mid` or `all`."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise HuatuoError(f"frame index must be 0 or more, got {value}")
        return value
    text = str(value).strip().lower()
    if text in ("mid", "all"):
        return text  # type: ignore[return-value]
    if text.isdigit():
        return int(text)
    raise HuatuoError(f"unknown frame {value!r}", hint="use a 0-based index, 'mid' or 'all'")


def frame_indices(choice: FrameChoice, number_of_frames: int) -> list[int]:
    """The 0-based frame indices a choice selects; an index past the end is a user error."""
    if choice == "all":
        return list(range(number_of_frames))
    if choice == "mid":
        return [number_of_frames // 2]
    if not 0 <= choice < number_of_frames:
        raise HuatuoError(
            f"frame {choice} does not exist: this image has {number_of_frames} frame(s) "
            f"(0..{number_of_frames - 1})"
        )
    return [choice]


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames as an int (absent, empty or 0 means one frame)."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        from huatuo_cli.imaging.reject import Rejected

        raise Rejected("corrupt", "corrupt header: Number of Frames is not a number") from None


def frame_view(ds: Dataset, index: int) -> Dataset:
    """The image-level attributes that apply to frame `index` (shared, then per-frame groups)."""
    view = Dataset()
    for keyword in _IMAGE_LEVEL:
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    groups = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for sequence, attrs in _GROUP_ATTRS.items():
            items = group.get(sequence)
            if not items:
                continue
            for keyword in attrs:
                if keyword in items[0]:
                    setattr(view, keyword, items[0][keyword].value)
    return view
