"""The one cleaning of model and user text before it is written anywhere a reader parses it.

A language model's output can hold any code point, raw control characters included (measured:
0x01, 0x03, 0x12, 0x1D in real answers). DICOM text VRs forbid control characters except a few
(PS3.5 6.2: UT, LT and ST allow LF, CR, FF and TAB; ESC only as the ISO 2022 code extension
marker, which UTF-8, the only character set huatuo writes, never needs; single-line VRs such as
LO allow none of them), and the same bytes make report.md and report.html misrender. Every writer
(DICOM SR, report.md, report.html) goes through `clean_text` so that all agree on what a reader sees.
"""

from __future__ import annotations

import re

#: C0 controls except TAB, LF, FF, CR; DEL; C1 controls (U+0080..U+009F); lone surrogates, which
#: no encoder can write; U+FFFE/U+FFFF (not characters).
_FORBIDDEN_MULTILINE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
#: single-line values: all C0 controls (the line breaks and TAB become a space first)
_LINE_BREAKS = re.compile("[\t\n\x0b\x0c\r]+")


def clean_text(text: str | None, *, multiline: bool = True) -> str:
    """`text` without the characters a DICOM text VR forbids (see module docstring).

    `multiline` keeps TAB, LF, CR and FF (UT/LT/ST, and the reports' answer blocks); otherwise
    line breaks and tabs become one space (LO/SH-like values, headings, table cells). Trailing
    spaces are removed: DICOM pads text with them, so they could not round-trip anyway.
    """
    value = "" if text is None else str(text)
    if not multiline:
        value = _LINE_BREAKS.sub(" ", value)
    return _FORBIDDEN_MULTILINE.sub("", value).rstrip(" ")
