"""huatuo_convert: server-side conversion, quantization, verification and fine-tuning.

Installed as `huatuo_convert` (the source folder is `convert/`; `convert` is taken on PyPI).
Needs the `convert` extra (torch, transformers, ...). The workstation runtime never imports it
at module level.
"""
