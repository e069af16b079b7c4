"""`huatuo convert all`: one checkpoint in, one verified model bundle out.

The bundle is built in a hidden folder beside OUT and renamed into place only after every part
passed its own check (LLM GGUF logit parity, ONNX embedding parity, mmproj measured) and the
whole was checked end to end: the first greedy tokens of ONNX embeddings + GGUF against the
PyTorch reference. A workstation therefore never sees a bundle nobody measured.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from huatuo_cli.atomic import output_error
from huatuo_cli.bundles.bundle import Manifest, apply_bundle_modes, describe_files, write_manifest
from huatuo_cli.bundles.model_card import CARD_NAME, CARD_ROLE, MANIFEST_KEY
from huatuo_cli.errors import HuatuoError
from huatuo_convert.atomic import atomic_folder, refuse_existing
from huatuo_convert.bundle_card import render_bundle_card, render_unidentified_card
from huatuo_convert.checkpoint import QWEN_LAYOUT, LlavaCheckpoint
from huatuo_convert.gguf_verify import tokenizer_report
from huatuo_convert.model_cards import CardMatch, identify

#: file names inside a bundle, by role
LLM_NAME = "llm-{quant}.gguf"
VISION_DIR = "vision"
MMPROJ_NAME = "mmproj-f16.gguf"
#: end-to-end check: greedy tokens compared with the reference for one image and one question
E2E_TOKENS = 16
E2E_QUESTION = "Is there a pleural effusion?"


def tool_versions() -> dict[str, str]:
    names = ("huatuo-cli", "llama_cpp_python", "onnxruntime", "onnx", "torch", "transformers", "gguf", "safetensors")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def end_to_end(bundle_dir: Path, llm_file: str, ref: Any) -> dict[str, Any]:
    """First greedy tokens of the bundle (ONNX fp32 + GGUF) vs the PyTorch reference, one test image.

    Both sides use the runtime's defaults (greedy, repetition penalty 1.2). For quantized LLMs a
    difference is expected and recorded; for f32/f16 the caller gates on exact agreement.
    """
    import numpy as np
    import torch

    from huatuo_cli.engine.encoder import ImageEncoder
    from huatuo_cli.engine.llm import LlamaEngine, Sampling
    from huatuo_cli.engine.preprocess import preprocess
    from huatuo_cli.engine.prompt import Turn, render
    from huatuo_cli.engine.session import interleave
    from huatuo_convert.onnx_validate import validation_images
    encoder = ImageEncoder.from_folder(bundle_dir / VISION_DIR, device="cpu")
    image = validation_images(encoder.image_size)[0][1]
    prompt = render([Turn(E2E_QUESTION, images=1)])
    pixels = torch.from_numpy(preprocess([image], encoder.config))
    embeds, _ = ref.prompt_embeds(prompt, pixels)
    expected = ref.greedy(embeds, E2E_TOKENS, repetition_penalty=Sampling().repetition_penalty)
    onnx_image = encoder.encode([image])[0]
    reference_image = ref.image_embeds(pixels)[0].numpy()
    engine = LlamaEngine(bundle_dir / llm_file, n_ctx=max(512, embeds.shape[1] + E2E_TOKENS + 8))
    try:
        segments = interleave(engine.tokenize(prompt), [onnx_image])
        got = engine.generate(segments, Sampling(max_tokens=E2E_TOKENS))
    finally:
        engine.close()
    n = min(len(expected), len(got.tokens))
    agree = next((i for i in range(n) if expected[i] != got.tokens[i]), n)
    a, b = onnx_image.ravel(), reference_image.ravel()
    return {
        "tokens_compared": max(len(expected), len(got.tokens)),
        "identical": expected == got.tokens,
        "first_divergence": None if expected == got.tokens else agree,
        "reference_stopped_early": len(expected) < E2E_TOKENS,
        "image_embedding_cosine": float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))),
    }


def build_bundle(
    src: Path,
    out: Path,
    quant: str = "q4_k_m",
    *,
    force: bool = False,
    with_mmproj: bool = True,
    allow_pickle: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> Manifest:
    """Convert, verify and assemble; OUT appears only when everything passed."""
    return build_bundles(src, [(Path(out), quant)], force=force, with_mmproj=with_mmproj, allow_pickle=allow_pickle,
                         threads=threads, log=log)[0]


def build_bundles(
    src: Path,
    targets: list[tuple[Path, str]],
    *,
    force: bool = False,
    with_mmproj: bool = True,
    allow_pickle: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[Manifest]:
    """One bundle per (OUT, quantization), sharing the reference work: the checkpoint is opened and
    the PyTorch reference loaded once, the vision tower exported and validated once (and the mmproj
    written once); each bundle then gets its own LLM GGUF, its own end-to-end check and manifest,
    and is published on its own as soon as it passed (a later one failing leaves the earlier ones)."""
    import shutil
    import tempfile

    from huatuo_convert.llm_gguf import write_llm_gguf
    from huatuo_convert.onnx_export import export_vision
    from huatuo_convert.quantize import check_quant
    from huatuo_convert.reference import LlavaReference

    if not targets:
        raise HuatuoError("no quantization given")
    targets = [(Path(out), check_quant(quant)) for out, quant in targets]
    quants = [quant for _, quant in targets]
    if len(set(quants)) != len(quants) or len({out for out, _ in targets}) != len(targets):
        raise HuatuoError(f"each quantization once, each into its own folder: {', '.join(quants)}")
    for out, _ in targets:  # before any work: nothing is built if one of them could not be published
        refuse_existing(out, force=force)
        if not out.parent.is_dir():
            raise HuatuoError(f"folder {out.parent} does not exist")
    card_match = identify(Path(src))  # before any work: an unsupported model or a bad fine-tune record stops here
    ckpt = LlavaCheckpoint.open(src, allow_pickle=allow_pickle)
    if not ckpt.has_vision:
        raise HuatuoError(f"{ckpt.hf_architecture} has no vision tower; a bundle needs a HuatuoGPT-Vision checkpoint")
    qwen = ckpt.layout == QWEN_LAYOUT  # transformers' Qwen2.5-VL: its own model is the reference
    if not qwen:
        ckpt.vision  # noqa: B018  fail early, naming what was looked for, if the tower is missing
    manifests: list[Manifest] = []
    first_out = targets[0][0]
    try:  # a read-only or full output folder is the user's to fix: one line, nothing left behind
        shared_tmp = tempfile.TemporaryDirectory(prefix=f".{first_out.name}.shared-", dir=first_out.parent)
    except OSError as exc:
        raise output_error(exc, first_out) from exc
    with shared_tmp as shared_dir:
        shared = Path(shared_dir)
        log("PyTorch reference (loaded once for every bundle)")
        pending_mmproj = False
        if qwen:
            from huatuo_convert.qwen_reference import QwenVLReference, check_chat_template
            from huatuo_convert.qwen_vision_export import export_qwen_vision

            template = check_chat_template(ckpt)  # before any work: a prompt the model was not trained on stops here
            qref = QwenVLReference.load(ckpt)
            # one model in memory: its text-only logits are the LLM gate's oracle (M-RoPE is 1D on text)
            ref = LlavaReference(ckpt=ckpt, tokenizer=qref.tokenizer, llm=qref.model, vision=None)
            log("vision tower + patch merger -> ONNX fp32/fp16 (validated against transformers' tower)")
            vision = export_qwen_vision(qref.model.model.visual, ckpt.config["vision_config"], ckpt.preprocessor_config,
                                        shared / VISION_DIR, tolerances=ckpt.family.vision_tolerances,
                                        config_sha256=ckpt.config_sha256)
            if with_mmproj:  # for llama.cpp tools; measured once the first LLM GGUF exists (mtmd needs it)
                from huatuo_convert.qwen_mmproj import write_qwen_mmproj

                log(f"vision tower -> {MMPROJ_NAME} (llama.cpp mtmd's qwen2.5vl_merger; measured, not used for answers)")
                write_qwen_mmproj(ckpt, shared / MMPROJ_NAME)
                with_mmproj = False
                pending_mmproj = True
        else:
            ref = LlavaReference.load(ckpt)  # the LLM checks and the end-to-end checks share it
            log("vision tower + projector -> ONNX fp32/fp16 (validated)")
            vision = export_vision(ckpt, shared / VISION_DIR, sidecar=False)
        shared_roles = {f"{VISION_DIR}/{name}": _vision_role(name) for name in vision.files}
        shared_roles = {path: role for path, role in shared_roles.items() if role}
        shared_fidelity: dict[str, Any] = {"vision": vision.fidelity}
        if qwen:
            shared_fidelity["prompt"] = template
            if pending_mmproj:
                shared_roles[MMPROJ_NAME] = "mmproj"
        if with_mmproj:
            from huatuo_convert.mmproj import convert_mmproj

            log(f"vision tower -> {MMPROJ_NAME} (llama.cpp mtmd; measured, see upstream defects)")
            shared_fidelity["mmproj"] = convert_mmproj(ckpt, shared / MMPROJ_NAME, threads=threads or 2, sidecar=False)
            shared_roles[MMPROJ_NAME] = "mmproj"
        for out, quant in targets:
            with atomic_folder(out, force=force) as work:  # renamed into place only if the block succeeds
                for path in shared_roles:
                    (work / path).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(shared / path, work / path)
                fidelity: dict[str, Any] = {}
                llm_file = LLM_NAME.format(quant=quant)
                log(f"language model -> {out.name}/{llm_file} (verified against the PyTorch reference)")
                _, fidelity["llm"] = write_llm_gguf(ckpt, work / llm_file, quant, threads=threads, ref=ref, sidecar=False)
                if pending_mmproj:
                    from huatuo_convert.qwen_mmproj import measure_qwen_mmproj

                    shared_fidelity["mmproj"] = measure_qwen_mmproj(shared / MMPROJ_NAME, qref, work / llm_file,
                                                                    threads=threads or 2)
                    pending_mmproj = False
                fidelity.update(shared_fidelity)
                log(f"end to end ({out.name}): ONNX embeddings + GGUF vs the reference, first greedy tokens")
                if qwen:
                    from huatuo_convert.qwen_reference import qwen_end_to_end

                    e2e = qwen_end_to_end(work, llm_file, qref, question=E2E_QUESTION, tokens=E2E_TOKENS,
                                          vision_dir=VISION_DIR)
                else:
                    e2e = end_to_end(work, llm_file, ref)
                fidelity["end_to_end"] = e2e
                if quant in ("f32", "f16") and not e2e["identical"]:
                    raise HuatuoError(
                        f"end-to-end check failed: the bundle's greedy answer diverges from the reference at token "
                        f"{e2e['first_divergence']}", hint="this is a converter bug; please report it with the manifest figures")
                roles = {llm_file: "llm", **shared_roles}
                manifest = _manifest(ckpt, Path(src), out.name, quant, describe_files(work, roles), fidelity,
                                     ref.tokenizer.markers, card_match)
                card = _card(manifest, card_match, ckpt)
                (work / CARD_NAME).write_text(card, encoding="utf-8")
                manifest.files += describe_files(work, {CARD_NAME: CARD_ROLE})
                write_manifest(work, manifest)
                apply_bundle_modes(work)
            manifests.append(manifest)
    return manifests


def _manifest(ckpt: LlavaCheckpoint, src: Path, bundle_name: str, quant: str, files: list, fidelity: dict[str, Any],
              markers: str, card_match: CardMatch) -> Manifest:
    """What a workstation reads: the source, and what the runtime needs of the checkpoint's family
    (prompt format, positions, preprocessing, image size, tokens per image) so that it never
    assumes one."""
    family = ckpt.family
    return Manifest(
        bundle_name=bundle_name,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        architecture=ckpt.arch,
        source={
            "checkpoint": src.resolve().name,
            "hf_architecture": ckpt.hf_architecture,
            "config_sha256": ckpt.config_sha256,
            "vision_layout": "embedded" if ckpt.layout == QWEN_LAYOUT else ckpt.vision.source,
            "layout": ckpt.layout,  # "llava" or "llava-hf" (transformers' LlavaForConditionalGeneration files)
        },
        prompt_format=family.prompt_format,
        quantization=quant,
        files=files,
        fidelity=fidelity,
        vision=_vision_manifest(ckpt),
        llm={
            "family": ckpt.llm_family,
            "positions": family.positions,
            "prompt_markers": markers,  # also in the GGUF (huatuo.tokenizer.markers)
            "hidden_size": ckpt.config["hidden_size"],
            "layers": ckpt.config["num_hidden_layers"],
            "context_length": ckpt.config.get("max_position_embeddings"),
        },
        tools=tool_versions(),
        extra={MANIFEST_KEY: card_match.manifest_entry()},
    )


def _vision_manifest(ckpt: LlavaCheckpoint) -> dict[str, Any]:
    """What the runtime's preprocessing needs: LLaVA's fixed image size and token count, or (an image
    keeping its aspect ratio) the pixel limits the checkpoint was trained with and the attention window."""
    family = ckpt.family
    if ckpt.layout == QWEN_LAYOUT:
        from huatuo_cli.engine.qwen_vision import QwenVisionConfig

        limits = QwenVisionConfig.from_dict(ckpt.preprocessor_config)
        return {"preprocess": family.vision.preprocess, "tokens_per_image": None, "min_pixels": limits.min_pixels,
                "max_pixels": limits.max_pixels, "window_size": int(ckpt.config["vision_config"].get("window_size", 112)),
                "max_tokens_per_image": limits.max_pixels // (limits.factor ** 2)}
    return {
        "select_layer": ckpt.select_layer,
        "select_feature": ckpt.select_feature,
        "image_size": ckpt.vision.config["image_size"],
        "tokens_per_image": family.vision.tokens_per_image(ckpt.vision.config),
        "preprocess": family.vision.preprocess,
        "image_aspect_ratio": ckpt.config.get("image_aspect_ratio", "pad"),
    }


def _card(manifest: Manifest, card_match: CardMatch, ckpt: LlavaCheckpoint) -> str:
    """MODEL_CARD.md: the identified card with the measured figures, or one that says no card applies."""
    measured = "\n".join(line for line in summary(manifest).split("\n")[1:] if "model card:" not in line)
    if card_match.card is not None:
        return render_bundle_card(card_match, bundle_name=manifest.bundle_name, quantization=manifest.quantization,
                                  created=manifest.created, measured=measured)
    return render_unidentified_card(card_match, bundle_name=manifest.bundle_name, quantization=manifest.quantization,
                                    created=manifest.created, measured=measured, architecture=ckpt.arch,
                                    hf_architecture=ckpt.hf_architecture, config_sha256=ckpt.config_sha256)


def _vision_role(name: str) -> str | None:
    return {"vision-fp32.onnx": "vision-fp32", "vision-fp16.onnx": "vision-fp16", "vision-int8.onnx": "vision-int8",
            "preprocessor_config.json": "preprocessor"}.get(name)


def summary(manifest: Manifest) -> str:
    """A few lines for the terminal: the figures an admin checks before shipping a bundle."""
    f = manifest.fidelity
    lines = [f"bundle {manifest.bundle_name}: {manifest.architecture}, {manifest.quantization}, {len(manifest.files)} files"]
    if "llm" in f:
        tok, logits = f["llm"]["tokenizer"], f["llm"]["logits"]
        lines.append(f"  llm: top-1 {logits['top1_agreement']:.2%}, "
                     f"max |dlogit| {logits['max_abs_logit_delta']:.3g}, mean KL {logits['mean_kl']:.3g}")
        lines += [f"  llm: {line}" for line in tokenizer_report(tok)]
    for name, report in f.get("vision", {}).get("files", {}).items():
        lines.append(f"  {name}: min cosine {report['min_cosine']:.6f}, max abs diff {report['max_abs_diff']:.2e}")
    if "mmproj" in f:
        lines.append(f"  mmproj (llama.cpp graph): mean cosine {f['mmproj']['mean_cosine']:.4f}, min {f['mmproj']['min_cosine']:.4f}"
                     + (f", {f['mmproj']['shape_mismatches']} image(s) resized otherwise by mtmd"
                        if f["mmproj"].get("shape_mismatches") else ""))
    e2e = f.get("end_to_end", {})
    if e2e:
        verdict = "identical" if e2e["identical"] else f"diverge at token {e2e['first_divergence']}"
        lines.append(f"  end to end (ONNX + GGUF vs reference, {e2e['tokens_compared']} greedy tokens): {verdict}")
    card = manifest.extra.get(MANIFEST_KEY)
    if card:
        lines.append(f"  model card: {CARD_NAME} from {card['card']}: {card['reason']}" if card["card"]
                     else f"  model card: {CARD_NAME} for an unidentified checkpoint: {card['reason']}")
    return "\n".join(lines)
