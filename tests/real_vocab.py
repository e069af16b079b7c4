"""Real vocabularies for tests: llama.cpp's vocab-only GGUFs from the llama-cpp-python sdist.

No model hub is reachable where huatuo is built, but the llama-cpp-python sdist on PyPI carries
`vendor/llama.cpp/models/ggml-vocab-qwen2.gguf` (Qwen2's real byte-level BPE) and
`ggml-vocab-llama-spm.gguf` (LLaMA's real sentencepiece vocabulary), each with `.inp`/`.out`
tokenization cases written by llama.cpp from the original tokenizers. The files are taken from the
sdist once per machine into a cache folder beside huatuo's llama.cpp build, never committed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QWEN2 = "ggml-vocab-qwen2.gguf"
LLAMA_SPM = "ggml-vocab-llama-spm.gguf"
FILES = tuple(name + ext for name in (QWEN2, LLAMA_SPM) for ext in ("", ".inp", ".out"))
#: the separator between cases in llama.cpp's `.inp` files
CASE_SEPARATOR = "\n__ggml_vocab_test__\n"


def _llama_version() -> str:
    spec = importlib.util.spec_from_file_location("llama_wheel", ROOT / "packaging" / "llama_wheel.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.VERSION)


def vocab_dir() -> Path:
    """The folder holding FILES, extracted from the sdist on first use.

    Outside the per-test XDG folders (tests isolate those): HUATUO_BUILD_CACHE, else ~/.cache/huatuo-build.
    """
    version = _llama_version()
    base = Path(os.environ.get("HUATUO_BUILD_CACHE") or Path.home() / ".cache" / "huatuo-build")
    folder = base / f"vocab-llama-cpp-python-{version}"
    if all((folder / name).is_file() for name in FILES):
        return folder
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", work], check=True)
        sdist = next(Path(work).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(work) / "vocab"
        staging.mkdir()
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in FILES and "/vendor/llama.cpp/models/" in member.name:
                    source = tar.extractfile(member)
                    assert source is not None
                    (staging / name).write_bytes(source.read())
        missing = [name for name in FILES if not (staging / name).is_file()]
        assert not missing, f"the llama-cpp-python {version} sdist lacks {missing}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not folder.exists():
            staging.rename(folder)
    return folder


def cases(vocab: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenization cases for a vocab GGUF: (text, ids of the original tokenizer)."""
    texts = vocab.with_name(vocab.name + ".inp").read_text(encoding="utf-8").split(CASE_SEPARATOR)
    assert texts[-1] == "", "each case ends with the separator"
    outs = vocab.with_name(vocab.name + ".out").read_text(encoding="utf-8").split("\n")
    ids = [[int(t) for t in line.split()] for line in outs[: len(texts) - 1]]
    return list(zip(texts[:-1], ids, strict=True))
