"""Make docs/tui.svg: `huatuo tui` at 120x40 on the sample studies, lung window, one question.

    .venv/bin/python docs/tui_screenshot.py BUNDLE [OUT.svg]

Any bundle works; the README's picture used the tiny random bundle of `make demo`, so the answer
is noise (the layout is the point).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # demo/ (the samples) is not installed

from demo.samples import write_sample_studies  # noqa: E402
from huatuo_cli.engine.llm import Sampling  # noqa: E402
from huatuo_cli.tui.app import make_app  # noqa: E402


async def shoot(bundle: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(write_sample_studies(Path(tmp) / "studies"), model=bundle, graphics="halfblock",
                       export_dir=tmp, sampling=Sampling(max_tokens=60))
        async with app.run_test(size=(120, 40)) as pilot:
            while app.model is None or app.picture is None:
                await pilot.pause(0.1)
            await pilot.press("w")
            while app.view is None or app.picture is None or app.picture[0] != app.view.key():
                await pilot.pause(0.1)
            await pilot.press("i", *"Is there a pneumothorax?", "enter")
            await pilot.pause(0.2)
            while app.answering is not None:
                await pilot.pause(0.1)
            await pilot.pause(0.2)
            app.save_screenshot(filename=out.name, path=str(out.parent))


if __name__ == "__main__":
    asyncio.run(shoot(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "docs/tui.svg")))
