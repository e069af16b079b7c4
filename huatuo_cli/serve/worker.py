"""One model, many clients: a bounded queue in front of one worker thread that answers through
`AnswerService` (question rules, audit record for every answer: ok, stopped, error).

`admit()` takes a place in the queue or refuses (429 with Retry-After) when `queue_size` requests
already wait behind the one being answered. A job whose client has gone (its `stop` event set)
is skipped if it has not started, and stopped at its next streamed piece if it has (audited as
stopped). The image embeddings of the last few studies are kept (by content hash and window), so
a follow-up about the same images encodes nothing again, and `LlamaEngine.prefill` reuses the
KV cache of the prompt prefix the follow-up shares with the previous answer, as `ask -i` does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from huatuo_cli.answering.service import AnswerService, Stopped
from huatuo_cli.errors import HuatuoError
from huatuo_cli.serve.images import render_images
from huatuo_cli.serve.protocol import ApiError, ChatRequest, bad_request

if TYPE_CHECKING:
    from huatuo_cli.answering.jobs import StudyInputs
    from huatuo_cli.answering.record import Answer
    from huatuo_cli.engine.llm import ImageSegment

EMBED_CACHE = 4  # studies whose image embeddings are kept


@dataclass
class Result:
    answer: Answer
    inputs: StudyInputs


class Ticket:
    """A place in the queue; released once, when the job is over (or was never started)."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._released = False

    def release(self) -> None:
        with self._worker.lock:
            if not self._released:
                self._released = True
                self._worker.admitted -= 1


class Worker:
    """The loaded model behind a bounded queue; `answer` runs in its single thread."""

    def __init__(self, service: AnswerService, *, queue_size: int, retry_after_s: int = 5) -> None:
        self.service = service
        self.limit = queue_size + 1  # the one answering plus those waiting
        self.retry_after_s = retry_after_s
        self.lock = threading.Lock()
        self.admitted = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="huatuo-serve")
        self.active: set[threading.Event] = set()
        self._embeds: OrderedDict[tuple[Any, ...], list[ImageSegment]] = OrderedDict()

    @property
    def max_images(self) -> int:
        return self.service.model.prompt.max_images

    def admit(self) -> Ticket:
        with self.lock:
            if self.admitted >= self.limit:
                raise ApiError(429, f"the server is busy: {self.limit - 1} requests are already waiting for the model; "
                               f"retry in {self.retry_after_s} s", type_="rate_limit_error", code="queue_full",
                               headers={"Retry-After": str(self.retry_after_s)})
            self.admitted += 1
        return Ticket(self)

    def answer(self, request: ChatRequest, stop: threading.Event, on_text: Callable[[str], None]) -> Result:
        """Render the images, answer, audit (in the worker thread). Raises Stopped, ApiError, or a bug."""
        from huatuo_cli.engine.session import Conversation

        if stop.is_set():
            raise Stopped  # the client left while queued: nothing was answered
        audit_id, inputs = render_images(request.images, window=request.window, frame=request.frame,
                                         limit=self.max_images)
        key = (tuple(inputs.inputs), inputs.window, request.frame)
        cached = self._embeds.get(key) if inputs.images else None
        conversation = Conversation(self.service.model, images=inputs.images, turns=list(request.history),
                                    image_embeds=cached)
        service = replace(self.service, sampling=replace(self.service.sampling, **request.sampling))

        def stream(text: str) -> None:
            if stop.is_set():
                raise Stopped
            on_text(text)

        try:
            answer = service.ask(conversation, request.question, study_id=audit_id, on_text=stream)
        except HuatuoError as exc:  # the prompt does not fit, too many images in the conversation...
            message = str(exc).splitlines()[0]
            code = "context_length_exceeded" if "context window" in message else "invalid_request"
            raise bad_request(message, param="messages", code=code) from None
        if inputs.images and conversation.image_embeds is not None:
            self._embeds[key] = conversation.image_embeds
            self._embeds.move_to_end(key)
            while len(self._embeds) > EMBED_CACHE:
                self._embeds.popitem(last=False)
        return Result(answer, inputs)

    def stop_all(self) -> None:
        for event in list(self.active):
            event.set()

    def close(self) -> None:
        self.stop_all()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.service.close()
