"""OpenAI's chat-completions format, read into what huatuo's answering path needs and written back.

A request is read completely before anything is queued: every way it can be wrong is an `ApiError`
(a 4xx in OpenAI's error shape) with a PHI-free message. Messages: `system`/`developer` turns are
ignored (HuatuoGPT-Vision's prompt has no system turn); the images come with the first user message
(text parts and `image_url` parts whose URL is a `data:` URL; the server never fetches anything);
earlier user/assistant pairs are the history; the last message is the question.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from huatuo_cli.engine.prompt import Turn
from huatuo_cli.errors import HuatuoError
from huatuo_cli.privacy import NOTICE

#: mime types of the image parts a request may carry, and the file suffix each is decoded under
IMAGE_TYPES = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/tiff": ".tif",
    "application/dicom": ".dcm", "image/dicom": ".dcm",
}
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.ASCII)
#: the decoding fields a request may set, with the ranges the command line accepts
MAX_TOKENS_LIMIT = 4096


class ApiError(Exception):
    """A request the server refuses: HTTP `status`, OpenAI's error `type` and `code`, PHI-free `message`."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code},
                "notice": NOTICE}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class ImagePart:
    mime: str
    data: bytes


@dataclass
class ChatRequest:
    """A chat-completion request as the answering path takes it."""

    question: str
    images: list[ImagePart]
    history: list[Turn]                 # earlier turns, answered; the first carries the images
    sampling: dict[str, Any]            # Sampling fields the request sets (the server's defaults fill the rest)
    stream: bool = False
    include_usage: bool = False
    window: str | None = None           # extension: DICOM window (as `huatuo ask --window`)
    frame: str | None = None            # extension: frame of multi-frame images (as `--frame`)
    extra: dict[str, Any] = field(default_factory=dict)


def _text_of(content: Any, where: str, *, images: list[ImagePart] | None) -> str:
    """The text of a message's content; image parts go to `images` (None: images not allowed here)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of content parts", param=f"{where}.content")
    texts: list[str] = []
    for i, part in enumerate(content):
        at = f"{where}.content[{i}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"{at} must be an object with a type", param=at)
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{at}.text must be a string", param=at)
            texts.append(part["text"])
        elif kind == "image_url":
            if images is None:
                raise bad_request(f"{at}: images are taken in the first user message only (the model sees a "
                                  "study's images once, before the first question)", param=at, code="image_not_first")
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(decode_data_url(url, at))
        else:
            raise bad_request(f"{at}: content part type {kind!r} is not supported (text and image_url are)", param=at)
    return "\n".join(texts)


def decode_data_url(url: Any, where: str) -> ImagePart:
    """A base64 data URL of a supported image type; anything else (above all a remote URL) is refused."""
    if not isinstance(url, str):
        raise bad_request(f"{where}.image_url.url must be a string", param=where)
    if not url.startswith("data:"):
        raise bad_request(f"{where}: only data: URLs are accepted; the server never fetches anything "
                          "(send the image as data:image/png;base64,... or data:application/dicom;base64,...)",
                          param=where, code="remote_image_refused")
    match = _DATA_URL.match(url)
    if not match or not match.group("b64"):
        raise bad_request(f"{where}: malformed data URL (expected data:<type>;base64,<data>)", param=where,
                          code="invalid_image")
    mime = match.group("mime").lower()
    if mime not in IMAGE_TYPES:
        raise bad_request(f"{where}: {mime} is not an image type huatuo reads ("
                          + ", ".join(sorted(set(IMAGE_TYPES))) + ")", param=where, code="invalid_image")
    try:
        data = base64.b64decode(url[match.end():], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where}: the data URL is not valid base64", param=where, code="invalid_image") from None
    if not data:
        raise bad_request(f"{where}: the image is empty", param=where, code="invalid_image")
    return ImagePart(mime, data)


def _number(body: dict[str, Any], name: str, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
        raise bad_request(f"{name} must be {'an integer' if integer else 'a number'}", param=name)
    if value < lo or value > hi or (lo_open and value == lo):
        raise bad_request(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}]", param=name)
    return value


def read_chat_request(body: Any, *, max_images: int) -> ChatRequest:
    """Check a decoded JSON body and read it; raises ApiError (400) for anything wrong."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", param="messages")
    n = body.get("n", 1)
    if n != 1:
        raise bad_request("n must be 1: one answer per request", param="n")
    sampling: dict[str, Any] = {}
    for name, value in (
        ("max_tokens", _number(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT, integer=True)
         or _number(body, "max_tokens", 1, MAX_TOKENS_LIMIT, integer=True)),
        ("temperature", _number(body, "temperature", 0, 2)),
        ("top_p", _number(body, "top_p", 0, 1, lo_open=True)),
        ("seed", _number(body, "seed", -(2**63), 2**63 - 1, integer=True)),
        ("repetition_penalty", _number(body, "repetition_penalty", 1.0, 2.0)),
    ):
        if value is not None:
            sampling[name] = value
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    window, frame = body.get("window"), body.get("frame")
    for name, value in (("window", window), ("frame", frame)):
        if value is not None and not isinstance(value, (str, int)) or isinstance(value, bool):
            raise bad_request(f"{name} must be a string", param=name)

    images: list[ImagePart] = []
    turns: list[tuple[str, str]] = []  # (role, text), system messages left out
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant"):
            raise bad_request(f"{where}.role must be system, developer, user or assistant", param=f"{where}.role")
        first_user = role == "user" and not any(r == "user" for r, _ in turns)
        text = _text_of(message.get("content"), where, images=images if first_user else None)
        if turns and turns[-1][0] == role:
            raise bad_request(f"{where}: user and assistant messages must alternate", param=where)
        if not turns and role == "assistant":
            raise bad_request(f"{where}: the conversation must start with a user message", param=where)
        turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise bad_request("the last message must be the user's question", param="messages")
    if len(images) > max_images:
        raise bad_request(f"{len(images)} images given; this model takes at most {max_images}",
                          param="messages", code="too_many_images")
    history = [Turn(question=turns[k][1], images=len(images) if k == 0 else 0, answer=turns[k + 1][1])
               for k in range(0, len(turns) - 1, 2)]
    for turn in history:
        _checked_question(turn.question)
    return ChatRequest(question=_checked_question(turns[-1][1]), images=images, history=history, sampling=sampling,
                       stream=stream, include_usage=include_usage,
                       window=None if window is None else str(window), frame=None if frame is None else str(frame))


def _checked_question(text: str) -> str:
    from huatuo_cli.engine.prompt import check_question

    try:
        return check_question(text)
    except HuatuoError as exc:
        raise bad_request(str(exc).splitlines()[0], param="messages", code="invalid_question") from None


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def finish_reason(stopped_by: str) -> str:
    return "length" if stopped_by == "max-tokens" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(*, cid: str, model: str, text: str, stopped_by: str, prompt_tokens: int, completion_tokens: int,
               huatuo: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason(stopped_by), "logprobs": None}],
        "usage": usage(prompt_tokens, completion_tokens),
        "notice": NOTICE,
        "huatuo": huatuo,
    }


def chunk(*, cid: str, model: str, created: int, delta: dict[str, Any] | None, finish: str | None = None,
          usage_figures: dict[str, int] | None = None, huatuo: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        "notice": NOTICE,
    }
    if usage_figures is not None:
        out["usage"] = usage_figures
    if huatuo is not None:
        out["huatuo"] = huatuo
    return out
