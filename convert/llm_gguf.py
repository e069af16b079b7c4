"""The one entry point that turns a checkpoint's language model into a verified GGUF.

Direct types are streamed into a temp file beside the output; other types are made from an F16
intermediate by llama.cpp's quantizer. Verification runs on the temp file, so a GGUF that fails
its tolerance never appears under the output name. The figures go to `OUT.fidelity.json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huatuo_convert import progress
from huatuo_convert.atomic import atomic_output, check_target, temp_path, write_text_atomic
from huatuo_convert.checkpoint import LlavaCheckpoint
from huatuo_convert.gguf_arch import arch_for
from huatuo_convert.gguf_write import DIRECT_TYPES, plan_tensors, write_gguf_file
from huatuo_convert.quantize import INTERMEDIATE, check_quant, llama_quantize


def fidelity_path(out: Path) -> Path:
    """Where the verification figures of `out` are written."""
    out = Path(out)
    return out.with_name(out.name + ".fidelity.json")


def write_llm_gguf(
    ckpt: LlavaCheckpoint,
    out: Path,
    quant: str = "f16",
    *,
    force: bool = False,
    verify: bool = True,
    name: str | None = None,
    threads: int | None = None,
    on_tensor: Callable[[str], None] | None = None,
    ref: Any = None,
    sidecar: bool = True,
) -> tuple[Path, dict[str, Any] | None]:
    """Write the language model of `ckpt` to `out` as GGUF of type `quant`; all or nothing.

    With `verify`, tokenizer and logit parity against the PyTorch reference are measured on the
    temp file first; a failed gate raises HuatuoError and leaves nothing behind. Returns the
    output path and the fidelity record (None without verification), also written to
    `fidelity_path(out)`. `ref`, a loaded `LlavaReference`, saves loading the reference again.
    `sidecar=False` (the bundle builder, which puts the figures in manifest.json) writes no sidecar.
    """
    from huatuo_convert.gguf_verify import check, verify_llm_gguf

    quant = check_quant(quant)
    out = Path(out)
    arch_for(ckpt)  # unknown architecture: fail before touching the disk
    check_target(out, force)
    fidelity = None
    direct = quant if quant in DIRECT_TYPES else INTERMEDIATE
    tensors = len(plan_tensors(ckpt, arch_for(ckpt), direct))
    with atomic_output(out, force=force) as tmp:
        # k-quants: an F16 intermediate beside the output, quantized by llama.cpp, then removed
        target = tmp if direct == quant else temp_path(out, INTERMEDIATE)
        try:
            with progress.step(f"writing {direct} tensors", tensors) as advance:
                def written(gguf_name: str) -> None:
                    advance()
                    if on_tensor:
                        on_tensor(gguf_name)

                write_gguf_file(ckpt, target, direct, label=quant, name=name, on_tensor=written)
            if target != tmp:
                with progress.step(f"quantizing to {quant} (llama.cpp)"):
                    llama_quantize(target, tmp, quant, threads=threads)
        finally:
            if target != tmp:
                target.unlink(missing_ok=True)
        if verify:
            with progress.step("verifying against the PyTorch reference"):
                fidelity = verify_llm_gguf(tmp, ref, quant, ckpt=ckpt, threads=threads)
            check(fidelity)
    if not sidecar:
        return out, fidelity
    try:
        if fidelity is not None:
            write_text_atomic(fidelity_path(out), json.dumps(fidelity, indent=2, ensure_ascii=False) + "\n")
        else:
            fidelity_path(out).unlink(missing_ok=True)  # a stale record must not describe a new file
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out, fidelity
