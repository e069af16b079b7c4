"""The demo's inputs (`make demo`, the tests, docs/tui_screenshot.py); not installed, not part of the runtime."""
