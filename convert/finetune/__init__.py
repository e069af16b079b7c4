"""`huatuo finetune`: LoRA fine-tuning of a HuatuoGPT-Vision checkpoint, then a merged checkpoint.

Modules, one job each: `records` reads and validates the LLaVA / PubMedVision data file,
`encode` turns a record into token ids and labels with the runtime's own prompt code,
`model` wraps the project's PyTorch reference modules with LoRA (peft), `loop` trains
(accelerate), `state` writes checkpoints and resumes, `merge` writes the merged checkpoint in the
original layout, `provenance` the `huatuo_finetune.json` it carries. Server side: needs the
`convert` and `train` extras.
"""
