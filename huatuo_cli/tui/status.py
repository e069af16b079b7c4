"""The status bar: model bundle, the providers that actually loaded, tokens/s, llama.cpp CPU kernels.

Providers and kernels come from the loaded model's `ModelInfo` (what ONNX Runtime and
`huatuo_cli.engine.cpu_backend` report after loading, as `ask --json` and `doctor` do), never from
what was asked for.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from huatuo_cli.engine.session import ModelInfo


class StatusBar(Static):
    """One line at the bottom; `state` says what the app is doing (scanning, loading, answering)."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    state: reactive[str] = reactive("starting")
    tokens_per_s: reactive[float] = reactive(0.0)

    def __init__(self) -> None:
        super().__init__(id="status")
        self.info: ModelInfo | None = None
        self.model_text = "no model"

    def set_model(self, info: ModelInfo | None, text: str | None = None) -> None:
        self.info = info
        self.model_text = text or (info.bundle if info else "no model")
        self.refresh_text()

    def watch_state(self) -> None:
        self.refresh_text()

    def watch_tokens_per_s(self) -> None:
        self.refresh_text()

    def refresh_text(self) -> None:
        parts = [self.state]  # the state and speed first: notifications cover the right end
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        parts.append(f"model {self.model_text}")
        if self.info is not None:
            gpu = "GPU" if self.info.llm_gpu_offload else "CPU"
            parts += [f"vision {self.info.vision_provider}", f"LLM {gpu}, kernels {self.info.llm_cpu}"]
        self.update(Text(" │ ".join(parts)))
