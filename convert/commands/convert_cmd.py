"""`huatuo convert ...`: the server-side commands.

This module imports no heavy package at module level so that `huatuo convert --help` works on a
workstation; each command imports what it needs through `huatuo_cli.extras.require`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from huatuo_cli.errors import HuatuoError
from huatuo_convert.families import all_families, default_family, family_names

#: what `convert gguf` and `convert all` add to the hint of refused pickle weights
ALLOW_PICKLE = "--allow-pickle accepts them if you trust their source"


@contextmanager
def _offering(error: type[HuatuoError], remedy: str) -> Iterator[None]:
    """Add this command's own option to the hint of `error` raised in the block. Modules that several
    commands reach name no option in their hints: only the command knows which ones it has."""
    try:
        yield
    except error as exc:
        exc.hint = f"{exc.hint}; {remedy}" if exc.hint else remedy
        raise


@click.group()
def convert() -> None:
    """Convert a HuatuoGPT-Vision checkpoint into a verified model bundle (server side).

    \b
    Examples:
      huatuo convert synth /tmp/tiny --vision-layout folder
      huatuo convert gguf /tmp/tiny /tmp/tiny-f16.gguf --quant f16
      huatuo convert vision /tmp/tiny /tmp/tiny-bundle/vision
      huatuo convert mmproj /tmp/tiny /tmp/tiny-bundle/mmproj-f16.gguf
    """


@convert.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(family_names()), default=default_family().name, show_default=True,
              help="The model family: " + "; ".join(f"{f.name} = {f.summary}" for f in all_families()) + ".")
@click.option("--vision-layout", type=click.Choice(["embedded", "folder"]), default="embedded", show_default=True,
              help="Vision tower inside the main safetensors, or as a CLIP folder named by mm_vision_tower.")
@click.option("--shards", type=int, default=2, show_default=True)
@click.option("--dtype", type=click.Choice(["bf16", "f16", "f32"]), default="bf16", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--hidden-size", type=int, default=64, show_default=True)
@click.option("--intermediate-size", type=int, default=160, show_default=True)
@click.option("--layers", "num_layers", type=int, default=2, show_default=True)
@click.option("--heads", "num_heads", type=int, default=4, show_default=True)
@click.option("--kv-heads", "num_kv_heads", type=int, default=2, show_default=True)
@click.option("--vocab-size", type=int, default=600, show_default=True, help="Target tokenizer size.")
@click.option("--vision-hidden-size", type=int, default=128, show_default=True)
@click.option("--vision-intermediate-size", type=int, default=256, show_default=True)
@click.option("--vision-layers", type=int, default=3, show_default=True)
@click.option("--image-size", type=int, default=56, show_default=True)
@click.option("--patch-size", type=int, default=14, show_default=True)
@click.option("--markers", type=click.Choice(["text", "tokens"]), default="text", show_default=True,
              help="The chat markers <|user|>/<|assistant|> as plain text (not in the vocabulary) or as added tokens.")
@click.option("--vocab-from", type=str, default=None, metavar="GGUF",
              help="Build the tokenizer from a real vocabulary: a llama.cpp vocab-only GGUF "
                   "(" + ", ".join(f"{f.synth.real_vocab} for {f.name}" for f in all_families()) + ").")
@click.option("--padded-vocab-size", type=int, default=None,
              help="Embedding rows beyond the tokenizer (HuatuoGPT-Vision-7B: 152064).")
@click.option("--layout", type=click.Choice(["llava", "hf", "hf-v5"]), default="llava", show_default=True,
              help="The original LLaVA files, or transformers' LlavaForConditionalGeneration (the -hf repositories) "
                   "with transformers 4.x tensor names (hf) or 4.52+/5.x ones (hf-v5).")
def synth(out: Path, layout: str, **options) -> None:
    """Write a tiny random checkpoint in the real HuatuoGPT-Vision on-disk layout.

    \b
    Example:
      huatuo convert synth /tmp/tiny34 --arch llava-llama --vision-layout folder --shards 3
    """
    from huatuo_convert.synth import SynthSpec, write_synthetic_checkpoint

    spec = SynthSpec(**options)
    if layout == "llava":
        write_synthetic_checkpoint(out, spec)
        click.echo(f"wrote synthetic {spec.arch} checkpoint ({spec.vision_layout} vision tower) to {out}")
        return
    import tempfile

    from huatuo_cli.errors import HuatuoError
    from huatuo_convert.synth_hf import write_hf_checkpoint

    if out.exists() and any(out.iterdir()):  # before anything is written
        raise HuatuoError(f"output folder {out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        write_hf_checkpoint(write_synthetic_checkpoint(Path(tmp) / "original", spec), out, style=layout)
    click.echo(f"wrote synthetic {spec.arch} checkpoint in transformers' LlavaForConditionalGeneration layout "
               f"({layout} tensor names) to {out}")


@convert.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--quant", default="f16", show_default=True, metavar="TYPE",
              help="f32, f16, bf16, q8_0 (written directly); q4_k_m, q5_k_m, q6_k, q4_0, ... (llama.cpp's quantizer).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model*.bin pickle weights (they can run code).")
@click.option("--no-verify", "no_verify", is_flag=True, help="Skip tokenizer and logit parity against the PyTorch reference.")
@click.option("--name", default=None, help="general.name of the GGUF (default: the checkpoint folder name).")
@click.option("--threads", type=int, default=None, help="CPU threads for quantization and verification.")
def gguf(src: Path, out: Path, quant: str, force: bool, allow_pickle: bool, no_verify: bool,
         name: str | None, threads: int | None) -> None:
    """Convert the language model of a checkpoint to one GGUF file, verified against PyTorch.

    Tokenizer parity (fixed corpus and the runtime's prompt chunks) and logit parity (every
    position of fixed prompts) are measured on the new file before it gets its name; F32, F16 and
    BF16 outputs fail when they miss their tolerance, quantized outputs report top-1 agreement and
    KL divergence. The figures are written to OUT.fidelity.json. Nothing is left behind on failure.

    \b
    Examples:
      huatuo convert gguf /models/HuatuoGPT-Vision-7B hgv7b-f16.gguf --quant f16
      huatuo convert gguf /models/HuatuoGPT-Vision-7B hgv7b-q4km.gguf --quant q4_k_m --force
    """
    from huatuo_convert.checkpoint import LlavaCheckpoint, PickleRefused
    from huatuo_convert.gguf_verify import FidelityGateFailed, tokenizer_report
    from huatuo_convert.llm_gguf import fidelity_path, write_llm_gguf

    with _offering(PickleRefused, ALLOW_PICKLE), _offering(FidelityGateFailed, "--no-verify skips this check (not recommended)"):
        ckpt = LlavaCheckpoint.open(src, allow_pickle=allow_pickle)
        path, fidelity = write_llm_gguf(ckpt, out, quant, force=force, verify=not no_verify, name=name, threads=threads)
    click.echo(f"wrote {path} ({quant}, {path.stat().st_size / 2**20:.1f} MiB)")
    if fidelity is not None:
        tok, logits = fidelity["tokenizer"], fidelity["logits"]
        for line in tokenizer_report(tok):
            click.echo(line)
        click.echo(
            f"logit parity over {logits['positions']} positions: max |delta| {logits['max_abs_logit_delta']:.3g}, "
            f"({logits['max_rel_logit_delta']:.2g} of max |logit|), top-1 {logits['top1_agreement']:.2%} "
            f"({logits['top1_disagreements_at_near_ties']} flips at {logits['near_ties']} near-ties), "
            f"mean KL {logits['mean_kl']:.3g}"
        )
        click.echo(f"figures: {fidelity_path(path)}")


@convert.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--fp16/--no-fp16", default=True, show_default=True,
              help="Also write vision-fp16.onnx (float16 weights, float32 inputs and outputs).")
def vision(src: Path, out: Path, fp16: bool) -> None:
    """Export the vision tower + projector to ONNX (fp32 and fp16) and validate it.

    OUT is a new folder: vision-fp32.onnx, vision-fp16.onnx, preprocessor_config.json and
    vision.fidelity.json (cosine and max abs diff per image against PyTorch). The command fails,
    writing nothing, if a file is out of tolerance.

    \b
    Example:
      huatuo convert vision /models/HuatuoGPT-Vision-7B /bundles/huatuo-7b/vision
    """
    from huatuo_convert.onnx_export import export_vision

    result = export_vision(src, out, fp16=fp16)
    for name, report in result.fidelity["files"].items():
        click.echo(f"{name}: min cosine {report['min_cosine']:.7f}, max abs diff {report['max_abs_diff']:.2e} "
                   f"over {len(report['images'])} images")
    click.echo(f"wrote {out}")


@convert.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--type", "ftype", type=click.Choice(["f16", "f32"]), default="f16", show_default=True,
              help="Weight type of the 2-D matrices (the patch convolution is always f16, as upstream).")
@click.option("--threads", type=int, default=2, show_default=True, help="Threads for the fidelity measurement.")
def mmproj(src: Path, out: Path, ftype: str, threads: int) -> None:
    """Write CLIP + projector as an mmproj GGUF for llama.cpp tools and Ollama.

    The file is loaded in llama.cpp's mtmd and its embeddings are compared with the PyTorch
    reference; the figures go to OUT's `.fidelity.json` sidecar. They are expected to be poor:
    llama.cpp's LLaVA graph has upstream defects (README "Vision"). huatuo's own runtime uses
    the ONNX encoder.

    \b
    Example:
      huatuo convert mmproj /models/HuatuoGPT-Vision-7B /bundles/huatuo-7b/mmproj-f16.gguf
    """
    from huatuo_convert.mmproj import convert_mmproj, fidelity_path

    report = convert_mmproj(src, out, ftype=ftype, threads=threads)
    click.echo(f"{out.name}: loads in llama.cpp mtmd; cosine to reference mean {report['mean_cosine']:.4f}, "
               f"min {report['min_cosine']:.4f} over {len(report['images'])} images "
               f"(upstream defects, see README)")
    click.echo(f"wrote {out} and {fidelity_path(out).name}")


@convert.command("all")
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--quant", "quants", multiple=True, metavar="TYPE",
              help="Type of the language model GGUF (f16, q8_0, q4_k_m, ...; see `convert gguf`) [default: q4_k_m]. "
                   "Repeat it for one bundle per type, OUT-TYPE each, sharing the reference and vision work.")
@click.option("--no-mmproj", is_flag=True, help="Leave out the mmproj GGUF (only llama.cpp tools / Ollama use it).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (only after the new bundle passed).")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model*.bin pickle weights (they can run code).")
@click.option("--threads", type=int, default=None, help="CPU threads for quantization and verification.")
def all_(src: Path, out: Path, quants: tuple[str, ...], no_mmproj: bool, force: bool, allow_pickle: bool,
         threads: int | None) -> None:
    """Build a verified model bundle: LLM GGUF + vision ONNX (fp32, fp16) + mmproj + manifest.json.

    Every part is checked against the PyTorch reference as it is written, then the whole bundle
    end to end (first greedy tokens for one image). manifest.json lists every file with its size
    and sha256, the source config hash, architecture, prompt format, quantization, the measured
    figures and tool versions. OUT appears only when everything passed.

    With several --quant, each bundle is written to OUT-TYPE (OUT-q8_0, OUT-q4_k_m): the checkpoint,
    the PyTorch reference and the vision export are done once, each bundle is verified and
    published on its own. Installed side by side, they are one model with tags: `--model NAME`
    takes the one measured fastest on the workstation's CPU, `--model NAME:TYPE` that one.

    \b
    Examples:
      huatuo convert all /models/HuatuoGPT-Vision-7B /bundles/huatuo-7b-q4_k_m --quant q4_k_m
      huatuo convert all /models/HuatuoGPT-Vision-7B /bundles/huatuogpt-vision-7b --quant q8_0 --quant q4_k_m
    """
    from huatuo_convert.bundle_build import build_bundles, summary
    from huatuo_convert.checkpoint import PickleRefused

    quants = quants or ("q4_k_m",)
    targets = [(out, quants[0])] if len(quants) == 1 else [(out.with_name(f"{out.name}-{q.lower()}"), q) for q in quants]
    with _offering(PickleRefused, ALLOW_PICKLE):
        manifests = build_bundles(src, targets, force=force, with_mmproj=not no_mmproj, allow_pickle=allow_pickle,
                                  threads=threads, log=lambda msg: click.echo(f"- {msg}", err=True))
    for manifest, (folder, _) in zip(manifests, targets, strict=True):
        click.echo(summary(manifest))
        click.echo(f"wrote bundle {folder}")


@convert.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--comment", default="", help="text appended to the public key line (e.g. who owns it)")
def keygen(folder: Path, comment: str) -> None:
    """Make IT's ed25519 signing key: FOLDER/huatuo-signing.key (owner-only) and .pub.

    Keep the .key on the conversion server. Put the .pub line in each workstation's trusted-keys
    file (docs/bundle.md): from then on only bundles signed with this key are used there.

    \b
    Example:
      huatuo convert keygen /root/huatuo-keys --comment "radiology IT 2026"
    """
    from huatuo_convert.sign import keygen as make_key

    folder.mkdir(parents=True, exist_ok=True)
    private, public, kid = make_key(folder, comment)
    click.echo(f"key {kid}: private {private} (keep it here), public {public} (trust it on workstations)")


@convert.command()
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="the private key from `huatuo convert keygen`")
def sign(bundle: Path, key_path: Path) -> None:
    """Verify every file of BUNDLE, then sign its manifest (writes manifest.json.sig).

    \b
    Example:
      huatuo convert sign /bundles/huatuo-7b-q4_k_m --key /root/huatuo-keys/huatuo-signing.key
    """
    from huatuo_convert.sign import sign_bundle

    kid = sign_bundle(bundle, key_path)
    click.echo(f"signed {bundle.name} with key {kid}")
