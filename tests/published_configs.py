"""The published checkpoints' config.json values that the converter and the model cards rely on."""

from __future__ import annotations

#: config.json of FreedomIntelligence/HuatuoGPT-Vision-7B and -34B as published on Hugging Face
#: (the keys that matter here; values copied from the files, not from the cards)
PUBLISHED = {
    "huatuogpt-vision-7b": {
        "architectures": ["LlavaQwen2ForCausalLM"], "model_type": "llava_qwen2", "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "vocab_size": 152064, "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "image_aspect_ratio": "pad",
        "mm_vision_tower": "./vit/clip_vit_large_patch14_336", "rope_theta": 1000000.0,
    },
    "huatuogpt-vision-34b": {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "hidden_size": 7168,
        "intermediate_size": 20480, "num_hidden_layers": 60, "num_attention_heads": 56, "num_key_value_heads": 8,
        "vocab_size": 64000, "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "image_aspect_ratio": "pad",
        "mm_vision_tower": "./vit/clip_vit_large_patch14_336", "rope_theta": 5000000.0,
    },
}
