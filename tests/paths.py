"""Where things are: the repository root (test children put it on PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
