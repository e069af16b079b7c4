"""The app: one `make_app(...)` factory for the CLI and the tests, and the key bindings.

Scanning, model loading, rendering and answering run in thread workers (exclusive per job, so a
newer request replaces an older one) and report back with `call_from_thread`; the interface never
waits on them. A failure becomes a notification with the one-line `HuatuoError` message; other
exceptions show only their type (their text may quote a path or a header), never a traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image as PILImage
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Input, Tree

from huatuo_cli.answering.service import AnswerService
from huatuo_cli.engine.llm import Sampling
from huatuo_cli.engine.prompt import check_question
from huatuo_cli.engine.session import VisionLanguageModel
from huatuo_cli.errors import HuatuoError
from huatuo_cli.imaging import ScanResult, load_image, scan
from huatuo_cli.tui.browse import WINDOW_CYCLE, View
from huatuo_cli.tui.chat import ChatPane
from huatuo_cli.tui.help import HelpScreen
from huatuo_cli.tui.status import StatusBar
from huatuo_cli.tui.studies import NodeData, StudyTree, patient_name, series_of
from huatuo_cli.tui.talk import AUDIT_COMMAND, Exchange, StudyChat


def describe_failure(exc: BaseException) -> str:
    """A user error's own message (PHI-free by contract); for anything else only its type."""
    if isinstance(exc, HuatuoError):
        return str(exc)
    return f"internal error ({type(exc).__name__}); nothing was lost"


class HuatuoApp(App[None]):
    """Study tree | image | chat, with a status bar and the key bindings in the footer."""

    TITLE = "huatuo"
    CSS = """
    #main { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q,ctrl+q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("i", "ask", "Ask"),
        Binding("w", "window(1)", "Window"),
        Binding("W", "window(-1)", "Prev window", show=False),
        Binding("right_square_bracket", "image(1)", "Next image"),
        Binding("left_square_bracket", "image(-1)", "Prev image"),
        Binding("pagedown", "image(1)", "Next image", show=False, priority=True),
        Binding("pageup", "image(-1)", "Prev image", show=False, priority=True),
        Binding("e", "export", "Export"),
        Binding("n", "names", "Names"),
        Binding("c", "card", "Model card", show=False),
        Binding("escape", "stop", "Stop / back"),
    ]

    def __init__(self, folder: Path, *, model: str | Path | None = None, load_model: bool = True, graphics: str = "auto",
                 export_dir: Path | None = None, sampling: Sampling | None = None, device: str = "auto",
                 vision: str = "onnx", threads: int | None = None) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.model_path = model
        self.wants_model = load_model
        self.graphics = graphics
        self.export_dir = Path(export_dir) if export_dir else Path.cwd()
        self.sampling = sampling or Sampling()
        self.device, self.vision, self.threads = device, vision, threads
        #: the one answering path (question rules, audit), once the bundle is loaded
        self.service: AnswerService | None = None
        self.view: View | None = None
        self.picture: tuple[tuple[str, str, int, str], PILImage.Image] | None = None
        self.chats: dict[str, StudyChat] = {}
        self.answering: StudyChat | None = None
        self.stop_event = threading.Event()

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        from huatuo_cli.tui.viewer import ScanView

        with Horizontal(id="main"):
            yield StudyTree()
            yield ScanView(self.graphics)
            yield ChatPane()
        yield StatusBar()
        yield Footer()

    @property
    def study_tree(self) -> StudyTree:
        return self.query_one(StudyTree)

    @property
    def chat_pane(self) -> ChatPane:
        return self.query_one(ChatPane)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    def on_mount(self) -> None:
        self.sub_title = "not for diagnostic use"
        self.status.state = "scanning"
        self.study_tree.focus()
        self.scan_folder()
        if self.wants_model:
            self.load_model()
        else:
            self.status.set_model(None, "none (browsing only)")

    def fail(self, exc: BaseException, *, title: str = "huatuo") -> None:
        self.notify(describe_failure(exc), title=title, severity="error", timeout=8)

    # -- workers -----------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def scan_folder(self) -> None:
        try:
            result = scan(self.folder)
        except Exception as exc:  # noqa: BLE001 - a worker reports every failure, it never crashes the app
            self.call_from_thread(self._scan_failed, exc)
            return
        self.call_from_thread(self._scanned, result)

    def _scanned(self, result: ScanResult) -> None:
        self.study_tree.show(result)
        self.status.state = "ready"
        if not result.studies:
            self.notify("no images found in this folder", severity="warning")
        if result.skipped:
            self.notify(f"{len(result.skipped)} file(s) skipped (not usable images)", timeout=4)

    def _scan_failed(self, exc: BaseException) -> None:
        self.fail(exc, title="scan")
        self.status.state = "scan failed"

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def load_model(self) -> None:
        from huatuo_cli.engine.quant_probe import find_model

        self.call_from_thread(self.status.set_model, None, "loading…")
        try:  # an audit trail that cannot be written refuses the model: nothing could be answered unaudited
            bundle = find_model(self.model_path)
            service = AnswerService.open(bundle, command=AUDIT_COMMAND, sampling=self.sampling, device=self.device,
                                         vision=self.vision, threads=self.threads)
        except Exception as exc:  # noqa: BLE001 - a worker reports every failure, it never crashes the app
            self.call_from_thread(self._model_failed, exc)
            return
        self.call_from_thread(self._model_loaded, service)

    @property
    def model(self) -> VisionLanguageModel | None:
        return self.service.model if self.service else None

    def _model_loaded(self, service: AnswerService) -> None:
        self.service = service
        self.status.set_model(service.model.info)
        self.chat_pane.question_box.disabled = False

    def _model_failed(self, exc: BaseException) -> None:
        self.status.set_model(None, "none (pass --model BUNDLE)")
        self.notify(describe_failure(exc), title="model", severity="error", timeout=10)  # with its hint

    @work(thread=True, exclusive=True, group="render", exit_on_error=False)
    def render_view(self, view: View) -> None:
        instance, frame = view.image
        try:
            rendered = load_image(instance.path, window=view.window, frame=frame)
        except Exception as exc:  # noqa: BLE001 - a worker reports every failure, it never crashes the app
            self.call_from_thread(self._render_failed, view, exc)
            return
        self.call_from_thread(self._rendered, view, rendered.frames[0], rendered.meta.window if rendered.meta else "")

    def _render_failed(self, view: View, exc: BaseException) -> None:
        self.fail(exc, title="image")
        if self.view is not None and view.key() == self.view.key():
            from huatuo_cli.tui.viewer import ScanView

            self.query_one(ScanView).caption(f"{view.describe()}\ncannot be shown: {describe_failure(exc)}")

    def _rendered(self, view: View, picture: PILImage.Image, window_label: str) -> None:
        if self.view is None or view.key() != self.view.key():
            return  # the reader has moved on
        self.picture = (view.key(), picture)
        from huatuo_cli.tui.viewer import ScanView

        caption = f"{view.describe()}\n{window_label}  (w/W window, [ ] image)"
        self.query_one(ScanView).show(picture, caption)

    @work(thread=True, exclusive=True, group="answer", exit_on_error=False)
    def answer(self, chat: StudyChat, view: View, picture: PILImage.Image, question: str) -> None:
        assert self.service is not None
        try:
            exchange = chat.ask(self.service, view, picture, question,
                                on_text=lambda text: self.call_from_thread(self._stream, chat, text),
                                stop=self.stop_event)
        except Exception as exc:  # noqa: BLE001 - a worker reports every failure, it never crashes the app
            self.call_from_thread(self._answered, chat, chat.exchanges[-1] if chat.exchanges else None, exc)
            return
        self.call_from_thread(self._answered, chat, exchange, None)

    def _stream(self, chat: StudyChat, text: str) -> None:
        if self.chat_pane.border_subtitle == f"study {chat.study_key}":
            self.chat_pane.stream(text)

    def _answered(self, chat: StudyChat, exchange: Exchange | None, exc: BaseException | None) -> None:
        self.answering = None
        if exchange is not None and exchange.outcome == "pending":
            exchange.outcome = "error"
        if exchange is not None and self.chat_pane.border_subtitle == f"study {chat.study_key}":
            self.chat_pane.finish(exchange)
        if exc is not None:
            self.fail(exc, title="answer")
        if exchange is not None and exchange.tokens_per_s:
            self.status.tokens_per_s = exchange.tokens_per_s
        self.status.state = {"stopped": "stopped", "error": "answer failed"}.get(
            exchange.outcome if exchange else "error", "ready")

    @work(thread=True, exclusive=True, group="names", exit_on_error=False)
    def read_names(self) -> None:
        names = {study.key: patient_name(study) for study in self.study_tree.studies()}
        self.call_from_thread(self.study_tree.reveal, names)

    # -- events ------------------------------------------------------------------------------------
    @on(Tree.NodeHighlighted, "#studies")
    def _highlighted(self, event: Tree.NodeHighlighted[NodeData]) -> None:
        picked = series_of(event.node)
        if picked is None:
            return
        study, series = picked
        if self.view is not None and self.view.series is series:
            return
        self.show(View.middle(study, series, self.view.window if self.view else "auto"))

    @on(Tree.NodeSelected, "#studies")
    def _selected(self, event: Tree.NodeSelected[NodeData]) -> None:
        if isinstance(event.node.data, tuple):
            self.action_ask()

    @on(Input.Submitted, "#ask")
    def _submitted(self, event: Input.Submitted) -> None:
        question = event.value.strip()
        if not question:
            return
        if self.model is None:
            self.notify("no model loaded yet", severity="warning")
            return
        try:  # the question rules of every front end (AnswerService checks them again)
            check_question(question)
        except HuatuoError as exc:
            self.fail(exc, title="question")
            return
        if self.answering is not None:
            self.notify("an answer is still being written: Esc stops it", severity="warning")
            return
        if self.view is None or self.picture is None or self.picture[0] != self.view.key():
            self.notify("wait for the image to be drawn, then ask", severity="warning")
            return
        chat = self.chats.setdefault(self.view.study.key, StudyChat(self.view.study.key, self.view.study.uid))
        event.input.value = ""
        self.chat_pane.start(question, self.view.describe())
        self.stop_event = threading.Event()
        self.answering = chat
        self.status.state = "answering (Esc stops)"
        self.answer(chat, self.view, self.picture[1], question)

    # -- actions -----------------------------------------------------------------------------------
    def show(self, view: View) -> None:
        """Put `view` on screen (rendered in a worker) and the study's history in the chat pane."""
        previous = self.view
        self.view = view
        if previous is None or previous.study.key != view.study.key:
            self.chat_pane.show_history(self.chats.get(view.study.key) or StudyChat(view.study.key, ""))
        from huatuo_cli.tui.viewer import ScanView

        self.query_one(ScanView).caption(f"{view.describe()}\ndrawing…")
        self.render_view(view)

    def action_window(self, delta: int) -> None:
        if self.view is not None:
            self.show(self.view.cycle_window(delta))

    def set_window(self, name: str) -> None:
        if self.view is not None:
            self.show(self.view.with_window(name))

    def action_image(self, delta: int) -> None:
        if self.view is not None:
            self.show(self.view.step(delta))

    def action_ask(self) -> None:
        box = self.chat_pane.question_box
        if box.disabled:
            self.notify("no model loaded: browsing only (start with --model BUNDLE)", severity="warning")
            return
        box.focus()

    def action_stop(self) -> None:
        if self.answering is not None:
            self.stop_event.set()
            self.status.state = "stopping"
        elif self.focused is self.chat_pane.question_box:
            self.study_tree.focus()

    def action_export(self) -> None:
        chat = self.chats.get(self.view.study.key) if self.view else None
        try:
            if chat is None:
                raise HuatuoError("nothing to export yet: ask a question first")
            path = chat.export(self.export_dir, self.model.info.bundle if self.model else "none")
        except HuatuoError as exc:
            self.fail(exc, title="export")
            return
        self.notify(f"conversation exported: {path.name}", title="export")

    def action_names(self) -> None:
        if self.study_tree.names_shown:
            self.study_tree.reveal(None)
        else:
            self.read_names()

    def action_card(self) -> None:
        """The bundle's model card (what the model is, what it is for and not for), read and hash-
        checked by the same code as `huatuo models info`."""
        from huatuo_cli.bundles.model_card import read_bundle_card, summary_lines

        if self.model is None:
            self.notify("no model loaded: browsing only (start with --model BUNDLE)", severity="warning")
            return
        bundle = self.model.bundle
        try:
            lines = summary_lines(read_bundle_card(bundle.root, bundle.manifest), bundle.manifest)
        except HuatuoError as exc:
            self.fail(exc, title="model card")
            return
        self.notify("\n".join(line.strip() for line in lines), title="model card", timeout=30)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        self.stop_event.set()
        self.exit()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The command palette (ctrl+p): windows by their `huatuo inspect` names, and the actions."""
        yield from super().get_system_commands(screen)
        for name in WINDOW_CYCLE:
            yield SystemCommand(f"Window: {name}", f"show the image with the {name} window",
                                lambda name=name: self.set_window(name))
        yield SystemCommand("Export conversation", "this study's questions and answers to Markdown", self.action_export)
        yield SystemCommand("Show / hide patient names", "in the study tree, on screen only", self.action_names)
        yield SystemCommand("Model card", "what the model is, what it is for and not for (MODEL_CARD.md)", self.action_card)
        yield SystemCommand("Keys", "every key of huatuo tui", self.action_help)

    def on_unmount(self) -> None:
        self.stop_event.set()


def make_app(folder: str | Path = ".", *, model: str | Path | None = None, load_model: bool = True,
             graphics: str = "auto", export_dir: str | Path | None = None,
             sampling: Sampling | None = None, device: str = "auto", vision: str = "onnx",
             threads: int | None = None) -> HuatuoApp:
    """The one way to build the app (CLI and tests): DIR to browse, the bundle (`--model` rules of
    `huatuo_cli.bundles.locate`; none with `load_model=False`), how to draw images (huatuo_cli.tui.GRAPHICS),
    where exports go, how to decode and where the engines run (`huatuo_cli.answering.model_options`)."""
    return HuatuoApp(Path(folder), model=model, load_model=load_model, graphics=graphics,
                     export_dir=Path(export_dir) if export_dir else None, sampling=sampling, device=device,
                     vision=vision, threads=threads)
