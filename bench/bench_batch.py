"""Batch throughput (studies per minute) and the share of wall time spent outside the engines.

Runs the real `huatuo batch` command (click, in process) on a folder of sample studies: pydicom
test files that render (CT, MR, US, CR-like, secondary capture; 64x64 to 1024x1024, plain and
compressed), each copied as its own study with new Study/Series/SOP UIDs; a multi-frame file gives
its representative frames (the 10-frame MR: 6), the others one image. Model: the Qwen2-0.5B /
CLIP-L-shaped F16 bundle of bench_ttft.py (built once into bench/out/). Engines use the runtime's
default thread count (all cores: 2 here).

"Inside the engines" is timed by wrapping, in this script only, the functions that call into
llama.cpp and ONNX Runtime: `LlamaEngine._decode_tokens` / `_decode_embeddings` (llama_decode),
`ImageEncoder.encode_pixels` (session.run) and both constructors (model loading). Everything else
(bundle hashing, scan, DICOM rendering, preprocessing, tokenizing, sampling in numpy,
thumbnails, results/errors/audit lines with fsync, reports) is overhead. A second run of the same
batch under cProfile lists the biggest overhead items (cProfile slows Python code, so only the
ranking of that list is meaningful; the share comes from the unprofiled run).

    PYTHONPATH=$PWD python bench/bench_batch.py --studies 10 --max-tokens 32
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pydicom
from _common import qwen05b_bundle
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from huatuo_cli.cli import cli
from huatuo_cli.engine.encoder import ImageEncoder
from huatuo_cli.engine.llm import LlamaEngine

SAMPLES = ("CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm", "MR2_UNCR.dcm", "US1_UNCR.dcm", "SC_rgb.dcm",
           "JPEG2000.dcm", "emri_small.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
           "OBXXXX1A.dcm", "MR_small_RLE.dcm")
QUESTIONS = ("Describe the findings.", "Is there any abnormality?")
#: (class, method) pairs whose time is spent in llama.cpp or ONNX Runtime
ENGINE_CALLS = ((LlamaEngine, "_decode_tokens"), (LlamaEngine, "_decode_embeddings"), (LlamaEngine, "__init__"),
                (ImageEncoder, "encode_pixels"), (ImageEncoder, "__init__"))


def make_studies(root: Path, n: int) -> None:
    """n studies, one file each, from pydicom's test files with fresh UIDs."""
    for i in range(n):
        ds = pydicom.dcmread(get_testdata_file(SAMPLES[i % len(SAMPLES)], download=False))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        if "file_meta" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        folder = root / f"study{i:02d}"
        folder.mkdir(parents=True)
        ds.save_as(folder / "IM0001", enforce_file_format=True)


class EngineClock:
    """Seconds spent inside the wrapped engine calls (outermost call only), per call site."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.images = 0  # images encoded (rows of pixel_values given to ONNX Runtime)
        self._depth = 0
        self._saved: list[tuple[type, str, object]] = []

    def __enter__(self) -> EngineClock:
        for cls, name in ENGINE_CALLS:
            original = getattr(cls, name)
            self._saved.append((cls, name, original))
            setattr(cls, name, self._wrap(f"{cls.__name__}.{name}", original))
        return self

    def __exit__(self, *exc) -> None:
        for cls, name, original in self._saved:
            setattr(cls, name, original)

    def _wrap(self, label: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if label == "ImageEncoder.encode_pixels":
                self.images += len(args[1])
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t
                    self.calls[label] = self.calls.get(label, 0) + 1
        return timed

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def run_batch(studies: Path, out: Path, bundle: Path, args, profiler: cProfile.Profile | None = None):
    argv = ["batch", str(studies), "--out", str(out), "--model", str(bundle), "--max-tokens", str(args.max_tokens),
            "--device", "cpu"]
    for q in QUESTIONS[: args.questions]:
        argv += ["-q", q]
    with EngineClock() as clock:
        t = time.perf_counter()
        if profiler:
            profiler.enable()
        result = CliRunner().invoke(cli, argv, catch_exceptions=False)
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - t
    if result.exit_code != 0:
        raise SystemExit(f"huatuo batch exited {result.exit_code}:\n{result.output[-2000:]}")
    return wall, clock


def top_overhead(profiler: cProfile.Profile, n: int) -> list[tuple[str, float, int]]:
    """Functions by own time, engine call sites and the engines' own Python excluded."""
    # `_decode_batch` is where the wrapped decode calls enter llama_decode (a ctypes call: own time)
    engine_names = {name for _, name in ENGINE_CALLS} | {"timed", "_decode_batch"}
    rows = []
    for (file, line, func), (_, calls, tottime, _, _) in pstats.Stats(profiler).stats.items():
        if func in engine_names and ("huatuo_cli/engine" in file or "bench_batch" in file):
            continue
        if "/llama_cpp/" in file or "/onnxruntime/" in file or "onnxruntime" in func:
            continue
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else ""
        rows.append((f"{func} {where}".strip(), tottime, calls))
    return sorted(rows, key=lambda r: -r[1])[:n]


#: runtime steps outside the engines, as (file suffix, function): their cumulative time in the profile
STEPS = (("huatuo_cli/bundles/bundle.py", "load_bundle"), ("huatuo_cli/answering/inputs.py", "jobs_from_folder"),
         ("huatuo_cli/answering/inputs.py", "render"), ("huatuo_cli/engine/preprocess.py", "preprocess"),
         ("huatuo_cli/engine/llm.py", "tokenize"), ("huatuo_cli/engine/llm.py", "choose_token"),
         ("huatuo_cli/engine/llm.py", "piece"), ("huatuo_cli/batch/report.py", "save_thumbnails"),
         ("huatuo_cli/answering/record.py", "build_record"), ("huatuo_cli/batch/results.py", "add_result"),
         ("huatuo_cli/answering/service.py", "_record"), ("huatuo_cli/batch/report.py", "write_reports"))


def step_times(profiler: cProfile.Profile) -> list[tuple[str, float, int]]:
    """Cumulative seconds and calls of each of `STEPS` in the profile."""
    stats = pstats.Stats(profiler).stats
    rows = []
    for suffix, func in STEPS:
        hits = [(v[3], v[1]) for (file, _, name), v in stats.items() if name == func and file.endswith(suffix)]
        rows.append((f"{Path(suffix).name}:{func}", sum(h[0] for h in hits), sum(h[1] for h in hits)))
    return sorted(rows, key=lambda r: -r[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--questions", type=int, default=2, choices=(1, 2))
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--no-profile", action="store_true", help="skip the second, profiled run")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    bundle = qwen05b_bundle()

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    os.environ["XDG_DATA_HOME"] = str(work / "xdg")  # the audit log goes here, not to the user's
    try:
        make_studies(work / "studies", args.studies)
        wall, clock = run_batch(work / "studies", work / "out", bundle, args)
        inside = clock.total
        n_answers = args.studies * args.questions
        images = clock.images
        print(f"# huatuo batch: {args.studies} studies ({images} images) x {args.questions} questions, --max-tokens "
              f"{args.max_tokens}, Qwen2-0.5B/CLIP-L-shaped F16 bundle, ONNX fp32 encoder, CPU, {os.cpu_count()} threads")
        print("| figure | value |")
        print("|---|---:|")
        print(f"| wall time | {wall:.1f} s |")
        print(f"| throughput | {args.studies / wall * 60:.2f} studies/min ({n_answers / wall * 60:.2f} answers/min) |")
        for label, sec in sorted(clock.seconds.items(), key=lambda kv: -kv[1]):
            print(f"| inside: {label} ({clock.calls[label]} calls) | {sec:.2f} s |")
        print(f"| outside llama.cpp and ONNX Runtime | {wall - inside:.2f} s = **{(wall - inside) / wall:.1%}** of wall |")
        if args.no_profile:
            return
        profiler = cProfile.Profile()
        pwall, pclock = run_batch(work / "studies", work / "out-profiled", bundle, args, profiler)
        print(f"\n# top overhead by own time (cProfile run: wall {pwall:.1f} s, outside engines "
              f"{pwall - pclock.total:.2f} s; profiling inflates Python time)")
        print("| runtime step outside the wrapped engine calls (cumulative) | s | calls |")
        print("|---|---:|---:|")
        for name, cumtime, calls in step_times(profiler):
            print(f"| `{name}` | {cumtime:.3f} | {calls} |")
        print("\n| function (own time, engines excluded) | own s | calls |")
        print("|---|---:|---:|")
        for name, tottime, calls in top_overhead(profiler, args.top):
            print(f"| `{name}` | {tottime:.3f} | {calls} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
