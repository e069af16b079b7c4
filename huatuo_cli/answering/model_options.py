"""The options every command that answers questions takes (`ask`, `batch`): which bundle, where
the encoder runs, how many images, how to decode. Defined once here so the commands cannot drift
apart; the decoding options arrive in the command as one `Sampling` value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from huatuo_cli.engine.prompt import MAX_IMAGES

if TYPE_CHECKING:
    from huatuo_cli.engine.llm import Sampling

F = TypeVar("F", bound=Callable[..., Any])

DEVICE_HELP = "where the vision encoder runs: auto (TensorRT, CUDA, CPU: the first that loads), cpu, cuda or tensorrt"
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
#: the decoding options, in the order they become `Sampling` fields
SAMPLING_PARAMS = ("max_tokens", "temperature", "top_p", "repetition_penalty", "seed")


def model_option(command: F) -> F:
    return click.option("--model", "model_path", metavar="BUNDLE",
                        help="model bundle folder, or an installed NAME[:TAG] (`huatuo models list`; NAME alone: the "
                             "quantization measured fastest on this CPU) (default: HUATUO_MODEL, config, models folder)")(command)


def device_option(command: F) -> F:
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                        help=DEVICE_HELP)(command)


def images_option(command: F) -> F:
    return click.option("--images", type=click.IntRange(1, MAX_IMAGES), default=MAX_IMAGES, show_default=True,
                        help="most images per study or question, from the given files and series folders "
                             "(each costs the bundle's tokens per image in prompt positions: 576 for "
                             "HuatuoGPT-Vision, `huatuo models info`)")(command)


def make_sampling(*, max_tokens: int, temperature: float, top_p: float, repetition_penalty: float,
                  seed: int) -> Sampling:
    """The one place where command-line values become a `Sampling`."""
    from huatuo_cli.engine.llm import Sampling

    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                    repetition_penalty=repetition_penalty, seed=seed)


def sampling_options(command: F) -> F:
    """Decoding and engine options: the command receives `sampling: Sampling`, `vision` and `threads`."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["sampling"] = make_sampling(**{name: kwargs.pop(name) for name in SAMPLING_PARAMS})
        return command(*args, **kwargs)

    out: Any = wrapper
    out = click.option("--threads", type=click.IntRange(1, 256), default=None,
                       help="llama.cpp and ONNX Runtime threads [default: physical cores]")(out)
    out = click.option("--vision", type=click.Choice(["onnx", "mmproj"]), default="onnx", show_default=True,
                       help="image encoder: onnx (exact) or the bundle's mmproj through llama.cpp "
                            "(inexact upstream graph, for comparison)")(out)
    out = click.option("--repetition-penalty", type=click.FloatRange(1.0, 2.0), default=1.2, show_default=True,
                       help="the official HuatuoGPT-Vision CLI's value")(out)
    out = click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
                       help="nucleus sampling (with --temperature > 0)")(out)
    out = click.option("--seed", type=int, default=0, show_default=True, help="sampling seed")(out)
    out = click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True,
                       help="0 is greedy (reproducible drafts)")(out)
    out = click.option("--max-tokens", type=click.IntRange(1, 4096), default=512, show_default=True,
                       help="longest answer in tokens")(out)
    return out  # type: ignore[no-any-return]
