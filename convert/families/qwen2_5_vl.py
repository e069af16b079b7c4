"""HuatuoGPT-Vision-7B-Qwen2.5VL: transformers' Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`).

A Qwen2.5-7B language model (Qwen2's tensors with q/k/v biases, NEOX rotation) whose rotary
positions are multimodal (M-RoPE: the head dimension split in three sections rotated by time, row
and column; llama.cpp's `qwen2vl` architecture with `rope.dimension_sections`), Qwen2.5-VL's ViT
(14-pixel patches, window attention with a few full-attention blocks, 2D rotary positions, a 2x2
patch merger) exported to ONNX by `huatuo_convert.qwen_vision_export`, and the processor's ChatML
template. The checkpoint is read by `huatuo_convert.qwen_vl` (both transformers generations of
config and tensor names); its reference is transformers' own model (`huatuo_convert.qwen_reference`).
"""

from __future__ import annotations

from functools import partial

from huatuo_cli.engine.prompt import QWEN_FORMAT
from huatuo_cli.engine.qwen_vision import QWEN_PREPROCESS
from huatuo_convert.families.base import POSITIONS_MROPE, ModelFamily, SynthRecipe, VisionSpec
from huatuo_convert.families.llava_qwen2 import FAMILY as QWEN2
from huatuo_convert.families.llava_qwen2 import QWEN2_TOKENIZER
from huatuo_convert.gguf_arch import DECODER_GLOBAL_TENSORS, DECODER_LAYER_TENSORS, LlmArch
from huatuo_convert.gguf_tokenizer import bpe_vocab
from huatuo_convert.qwen_synth import write_qwen_vl_checkpoint
from huatuo_convert.synth_tokenizers import BpeStyle, write_bpe_tokenizer

ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"

#: Qwen2.5-VL-7B-Instruct's added tokens after Qwen2's 151 643 learned ones (tokenizer.json
#: `added_tokens`, all `special`), in id order from 151 643
QWEN25_VL_TOKENIZER = BpeStyle(
    split_regex=QWEN2_TOKENIZER.split_regex,
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                    "<|repo_name|>", "<|file_sep|>"),
    eos="<|im_end|>",
    tokenizer_config={**QWEN2_TOKENIZER.tokenizer_config, "model_max_length": 131072},
)

#: the vision side: any image size, so the number of prompt positions follows the image
QWEN_VIT = VisionSpec(tower="qwen-vit", projector="patch-merger", preprocess=QWEN_PREPROCESS, fixed_size=False)


FAMILY = ModelFamily(
    name="qwen2.5-vl",
    summary="HuatuoGPT-Vision-7B-Qwen2.5VL layout (Qwen2.5-VL)",
    hf_architecture=ARCHITECTURE,
    model_type="qwen2_5_vl",
    text_architecture=ARCHITECTURE,
    text_model_type="qwen2_5_vl_text",
    llm=LlmArch(
        gguf_arch="qwen2vl",
        global_tensors=DECODER_GLOBAL_TENSORS,
        layer_tensors={
            **DECODER_LAYER_TENSORS,
            "self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
            "self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
            "self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
        },
        mrope=True,
    ),
    vocab=partial(bpe_vocab, pre="qwen2"),
    # the language model's text-only oracle (logit parity): with one position per text token M-RoPE is
    # plain RoPE, so Qwen2's class with these weights is exact; images are checked end to end against
    # transformers' own Qwen2_5_VLForConditionalGeneration (huatuo_convert.qwen_reference)
    reference_class=QWEN2.reference_class,
    reference_config=QWEN2.reference_config,
    synth=SynthRecipe(
        write_tokenizer=partial(write_bpe_tokenizer, style=QWEN25_VL_TOKENIZER),
        config=lambda layers: {},
        vocab_multiple=64,
        real_vocab="ggml-vocab-qwen2.gguf",
        write_checkpoint=write_qwen_vl_checkpoint,
    ),
    card="huatuogpt-vision-7b-qwen2.5vl",
    vision=QWEN_VIT,
    prompt_format=QWEN_FORMAT,
    positions=POSITIONS_MROPE,
)
