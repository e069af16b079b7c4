"""The PyTorch reference of the whole LLaVA model: the oracle of every fidelity check.

It follows the official HuatuoGPT-Vision / LLaVA-1.5 semantics (docs/model.md): CLIP hidden state
at `mm_vision_select_layer` (index into the tuple whose element 0 is the embeddings), patch tokens
only, `mlp2x_gelu` projector with exact GELU, image embeddings spliced where `<image>` stands,
chunks tokenized separately, then the language model. Everything runs in float32 by default, from
the checkpoint's stored weights, with eager attention: it is slow and exact on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huatuo_cli.engine.prompt import prompt_format
from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.checkpoint import QWEN_LAYOUT, LlavaCheckpoint
from huatuo_convert.reference_tokenizer import ReferenceTokenizer, load_reference_tokenizer


def llm_config(ckpt: LlavaCheckpoint):
    """A transformers config for the language model alone."""
    transformers = require("transformers")
    c = ckpt.config
    common = dict(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=ckpt.num_kv_heads,
        max_position_embeddings=c.get("max_position_embeddings", 4096),
        rms_norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": ckpt.rope_theta},
        tie_word_embeddings=c.get("tie_word_embeddings", False),
        hidden_act=c.get("hidden_act", "silu"),
    )
    cfg = ckpt.family.reference_config(transformers, common, c)
    cfg._attn_implementation = "eager"
    return cfg


def build_llm(ckpt: LlavaCheckpoint, dtype=None):
    """The language model with the checkpoint's weights (projector and tower excluded)."""
    torch = require("torch")
    transformers = require("transformers")
    dtype = dtype or torch.float32
    cfg = llm_config(ckpt)
    cls = getattr(transformers, ckpt.family.reference_class)
    with torch.device("meta"):
        model = cls(cfg)
    state = {name: ckpt.get(name).to(dtype) for name in ckpt.llm_tensor_names()}
    if cfg.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    expected = set(model.state_dict())
    unexpected = sorted(set(state) - expected)
    missing = sorted(expected - set(state))
    if unexpected or missing:
        raise HuatuoError(f"checkpoint tensors do not match {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, assign=True, strict=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)  # buffers were on meta
    return model.eval()


def build_vision(ckpt: LlavaCheckpoint, dtype=None):
    """(CLIPVisionModel, projector) with the checkpoint's weights."""
    torch = require("torch")
    transformers = require("transformers")
    dtype = dtype or torch.float32
    tower = ckpt.vision
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**tower.config))
    clip.config._attn_implementation = "eager"
    expected = clip.state_dict()
    state = {}
    for name in tower.state_dict_names():
        # transformers 4.x names keys `vision_model.…`; 5.x's CLIPVisionModel drops that prefix.
        key = name if name in expected else name.removeprefix("vision_model.")
        if key in expected:  # e.g. position_ids buffers of old checkpoints are not parameters
            state[key] = tower.get(name).to(dtype)
    clip.load_state_dict(state, strict=False)
    missing = [k for k in clip.state_dict() if k not in state and not k.endswith("position_ids")]
    if missing:
        raise HuatuoError(f"vision tower is missing tensors: {missing[:5]}")
    projector = build_projector(ckpt, dtype)
    return clip.to(dtype).eval(), projector


def build_projector(ckpt: LlavaCheckpoint, dtype=None):
    torch = require("torch")
    kind = ckpt.config.get("mm_projector_type", "linear")
    if kind != "mlp2x_gelu":
        raise HuatuoError(f"projector type '{kind}' is not supported (HuatuoGPT-Vision uses mlp2x_gelu)")
    w0, w2 = ckpt.get("model.mm_projector.0.weight"), ckpt.get("model.mm_projector.2.weight")
    proj = torch.nn.Sequential(
        torch.nn.Linear(w0.shape[1], w0.shape[0]), torch.nn.GELU(), torch.nn.Linear(w2.shape[1], w2.shape[0])
    )
    proj.load_state_dict({
        "0.weight": w0, "0.bias": ckpt.get("model.mm_projector.0.bias"),
        "2.weight": w2, "2.bias": ckpt.get("model.mm_projector.2.bias"),
    })
    return proj.to(dtype or torch.float32).eval()


class VisionEncoder:
    """`pixel_values -> image embeddings` exactly as LLaVA computes them; also the ONNX export module."""

    def __init__(self, clip, projector, select_layer: int, select_feature: str) -> None:
        self.clip, self.projector = clip, projector
        self.select_layer, self.select_feature = select_layer, select_feature

    def features(self, pixel_values):
        out = self.clip(pixel_values, output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            feats = feats[:, 1:]
        elif self.select_feature != "cls_patch":
            raise HuatuoError(f"unknown mm_vision_select_feature '{self.select_feature}'")
        return feats

    def __call__(self, pixel_values):
        return self.projector(self.features(pixel_values))


@dataclass(frozen=True)
class ReferenceAnswer:
    """A reference's greedy answer to one question about some images."""

    prompt_tokens: int  # prompt positions, image rows included
    tokens: list[int]
    text: str


def load_reference(src: Path | str | LlavaCheckpoint) -> Any:
    """The whole-model oracle of a checkpoint: LLaVA's (`LlavaReference`) or, for transformers'
    Qwen2.5-VL layout, transformers' own model (`huatuo_convert.qwen_reference.QwenVLReference`).
    Both answer through `answer(question, images, max_new_tokens, repetition_penalty=...)`."""
    ckpt = src if isinstance(src, LlavaCheckpoint) else LlavaCheckpoint.open(src)
    if ckpt.layout == QWEN_LAYOUT:
        from huatuo_convert.qwen_reference import QwenVLReference

        return QwenVLReference.load(ckpt)
    return LlavaReference.load(ckpt)


@dataclass
class LlavaReference:
    """The PyTorch oracle: tokenizer, language model, and (for LLaVA checkpoints) the vision path."""

    ckpt: LlavaCheckpoint
    tokenizer: ReferenceTokenizer
    llm: Any
    vision: VisionEncoder | None

    @classmethod
    def load(cls, src: Path | str | LlavaCheckpoint, *, with_vision: bool = True) -> LlavaReference:
        torch = require("torch")
        torch.manual_seed(0)
        ckpt = src if isinstance(src, LlavaCheckpoint) else LlavaCheckpoint.open(src)
        vision = None
        if with_vision and ckpt.has_vision:
            clip, projector = build_vision(ckpt)
            vision = VisionEncoder(clip, projector, ckpt.select_layer, ckpt.select_feature)
        return cls(ckpt=ckpt, tokenizer=load_reference_tokenizer(ckpt.root, prompt_format(ckpt.family.prompt_format)),
                   llm=build_llm(ckpt), vision=vision)

    # -- embeddings ----------------------------------------------------------------------------
    def image_embeds(self, pixel_values):
        """[N, tokens, hidden] for preprocessed pixel values [N, 3, H, W] (float32 tensor)."""
        torch = require("torch")
        if self.vision is None:
            raise HuatuoError("this checkpoint has no vision tower")
        with torch.no_grad():
            return self.vision(pixel_values)

    def prompt_embeds(self, prompt: str, pixel_values=None):
        """Input embeddings of a prompt, image embeddings spliced at each `<image>`.

        Returns (embeds [1, T, hidden], token ids with -200 at image positions, as LLaVA marks them).
        """
        torch = require("torch")
        chunks = self.tokenizer.encode_chunks(prompt)
        n_images = len(chunks) - 1
        images = self.image_embeds(pixel_values) if n_images else None
        if n_images and (images is None or images.shape[0] != n_images):
            raise HuatuoError(f"prompt has {n_images} <image> markers but {0 if images is None else images.shape[0]} images were given")
        table = self.llm.get_input_embeddings()
        parts, ids = [], []
        with torch.no_grad():
            for i, chunk in enumerate(chunks):
                if chunk:
                    parts.append(table(torch.tensor(chunk)))
                    ids.extend(chunk)
                if i < n_images:
                    parts.append(images[i])
                    ids.extend([-200] * images.shape[1])
        return torch.cat(parts).unsqueeze(0), ids

    def answer(self, question: str, images: list[Any], max_new_tokens: int, *, repetition_penalty: float = 1.2,
               preprocess_config: Any = None) -> ReferenceAnswer:
        """Greedy answer to one question about `images` (PIL), in the checkpoint's prompt format, the
        images preprocessed as the runtime does (`preprocess_config`: the bundle's; default the checkpoint's)."""
        torch = require("torch")
        from huatuo_cli.engine.preprocess import PreprocessConfig, preprocess
        from huatuo_cli.engine.prompt import Turn

        config = preprocess_config or PreprocessConfig.from_dict(self.ckpt.preprocessor_config)
        pixels = torch.from_numpy(preprocess(images, config)) if images else None
        embeds, _ = self.prompt_embeds(self.tokenizer.fmt.render([Turn(question, images=len(images))]), pixels)
        ids = self.greedy(embeds, max_new_tokens, repetition_penalty=repetition_penalty)
        return ReferenceAnswer(prompt_tokens=int(embeds.shape[1]), tokens=ids, text=self.tokenizer.decode(ids).strip())

    # -- language model ------------------------------------------------------------------------
    def logits(self, embeds):
        """Logits [T, vocab] for input embeddings [1, T, hidden]."""
        torch = require("torch")
        with torch.no_grad():
            return self.llm(inputs_embeds=embeds).logits[0].float()

    def token_logits(self, ids: list[int]):
        torch = require("torch")
        with torch.no_grad():
            return self.llm(input_ids=torch.tensor([ids])).logits[0].float()

    def greedy(self, embeds, max_new_tokens: int, *, repetition_penalty: float = 1.0,
               stop_ids: set[int] | None = None) -> list[int]:
        """Greedy continuation of input embeddings, as token ids.

        The repetition penalty is transformers' own processor over the generated tokens (with
        `inputs_embeds`, HF generate's input_ids hold only the generated tokens), as the official
        CLI decodes with `repetition_penalty=1.2`.
        """
        torch = require("torch")
        transformers = require("transformers")
        penalty = transformers.RepetitionPenaltyLogitsProcessor(repetition_penalty) if repetition_penalty != 1.0 else None
        stop_ids = stop_ids if stop_ids is not None else {self.tokenizer.eos_id}
        out: list[int] = []
        past = None
        step = embeds
        with torch.no_grad():
            for _ in range(max_new_tokens):
                res = self.llm(inputs_embeds=step, past_key_values=past, use_cache=True)
                past = res.past_key_values
                scores = res.logits[:, -1].float()
                if penalty is not None and out:
                    scores = penalty(torch.tensor([out]), scores)
                nxt = int(scores[0].argmax())
                if nxt in stop_ids:
                    break
                out.append(nxt)
                step = self.llm.get_input_embeddings()(torch.tensor([[nxt]]))
        return out
