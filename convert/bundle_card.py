"""The bundle's `MODEL_CARD.md`: the matching card plus what this conversion measured.

A checkpoint no card matches (an unknown fine-tune or derivative) still gets a card
(`render_unidentified_card`): what was found and measured, and that intended use and limitations
are the provider's to state, so every bundle tells its reader what it is and is not known to be.

The source card says what the model is; the bundle's copy adds what only this bundle knows: its
quantization, the fidelity figures measured while it was built, how the checkpoint was identified,
and, for a checkpoint `huatuo finetune` produced, a "Fine-tuning" section (data, steps, losses).
The added facts also go into a `[bundle]` table of the front matter so that `huatuo models info`
can summarise them without parsing prose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huatuo_cli.bundles.model_card import FENCE, UNIDENTIFIED
from huatuo_convert.model_cards import CardMatch


def _toml_value(value: Any) -> str:
    """A TOML scalar: JSON's string escapes are valid in TOML basic strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _toml_table(name: str, values: dict[str, Any]) -> list[str]:
    return [f"[{name}]"] + [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]


def _finetune_facts(match: CardMatch) -> dict[str, Any]:
    assert match.finetune is not None
    raw, data = match.finetune.raw, match.finetune.data
    return {
        "base_checkpoint": Path(raw["base_checkpoint"]).name,
        "base_config_sha256": raw["base_config_sha256"],
        "description": data["description"],
        "train_file": Path(data["train_file"]).name,
        "train_records": data["train_records"],
        "eval_file": Path(data["eval_file"]).name if data["eval_file"] else None,
        "eval_records": data["eval_records"],
        "images": data["images"],
        "steps": raw["steps"],
        "epochs": raw["epochs"],
        "learning_rate": raw["learning_rate"],
        "lora_rank": raw["lora_rank"],
        "lora_alpha": raw["lora_alpha"],
        "train_projector": raw["train_projector"],
        "eval_loss": raw["eval_loss"],
        "final_train_loss": raw["final_train_loss"],
        "finished_at": raw["finished_at"],
        "huatuo_version": raw["huatuo_version"],
    }


def _finetune_section(match: CardMatch, facts: dict[str, Any]) -> str:
    assert match.card is not None
    eval_loss = "not measured (no evaluation file)" if facts["eval_loss"] is None else f"{facts['eval_loss']:.4g}"
    evaluation = (f"{facts['eval_records']} records from `{facts['eval_file']}`" if facts["eval_file"]
                  else "none")
    return "\n".join([
        "## Fine-tuning",
        "",
        f"This bundle is **not** {match.card.name} as published: `huatuo finetune` trained LoRA adapters on it",
        "and merged them into its weights. The benchmark figures above are the base model's; nobody",
        "measured this fine-tune on them. Judge it by the evaluation below and by your own review.",
        "",
        f"- training data: {facts['description'] or '(no description recorded)'}",
        f"- training file: `{facts['train_file']}`, {facts['train_records']} records, {facts['images']} images",
        f"- evaluation data: {evaluation}",
        (f"- steps: {facts['steps']} ({facts['epochs']} epochs), learning rate {facts['learning_rate']}, "
         f"LoRA rank {facts['lora_rank']}, alpha {facts['lora_alpha']}, projector "
         f"{'trained' if facts['train_projector'] else 'frozen'}"),
        f"- evaluation loss: {eval_loss}; final training loss: {facts['final_train_loss']:.4g}",
        f"- base checkpoint: `{facts['base_checkpoint']}` (config sha256 {facts['base_config_sha256'][:16]}…)",
        f"- finished {facts['finished_at']} with huatuo {facts['huatuo_version']}",
        "",
    ])


def render_bundle_card(match: CardMatch, *, bundle_name: str, quantization: str, created: str,
                       measured: str) -> str:
    """MODEL_CARD.md for a bundle; `measured` is the conversion's summary of its fidelity figures."""
    card = match.card
    assert card is not None, "render_bundle_card needs a matching card"
    lines = card.text.split("\n")
    end = next(i for i in range(1, len(lines)) if lines[i].strip() == FENCE)
    name = f"Fine-tune of {card.name}" if match.kind == "fine-tune" else card.name
    table = _toml_table("bundle", {"name": name, "bundle_name": bundle_name, "card": card.id, "match": match.reason,
                                   "quantization": quantization, "created": created})
    facts = _finetune_facts(match) if match.finetune else None
    if facts:
        table += [""] + _toml_table("bundle.fine_tuning", facts)
    body = "\n".join(lines[end + 1:]).rstrip("\n")
    if facts:
        body = body.replace(f"\n# {card.name}\n", f"\n# {name}\n", 1)
        section = _finetune_section(match, facts)
        if "\n## Intended use" in body:  # before the uses, where a reader looks for what the model is
            body = body.replace("\n## Intended use", "\n" + section + "\n## Intended use", 1)
        else:
            body += "\n\n" + section
    bundle_section = "\n".join([
        "", "## This bundle", "",
        f"- bundle `{bundle_name}`, language model quantization **{quantization}**, built {created}",
        f"- identified as: {match.reason}",
        "- measured while it was built (all figures in `manifest.json`, key `fidelity`):",
        "", "```", measured.strip("\n"), "```", "",
    ])
    head = lines[:end] + ["", "# Added by `huatuo convert all` for this bundle"] + table + [FENCE]
    return "\n".join(head) + "\n" + body + "\n" + bundle_section


UNIDENTIFIED_SUMMARY = ("Not identified as a published checkpoint: intended use and limitations are the "
                        "provider's to state.")


def render_unidentified_card(match: CardMatch, *, bundle_name: str, quantization: str, created: str, measured: str,
                             architecture: str, hf_architecture: str, config_sha256: str) -> str:
    """MODEL_CARD.md for a checkpoint no card applies to: the architecture found, the source config's
    hash, the measured fidelity, and no claim of what the model is for."""
    assert match.card is None, "a matching card is rendered by render_bundle_card"
    name = f"Unidentified {architecture} checkpoint"
    head = [FENCE, f'id = "{UNIDENTIFIED}"', f"name = {_toml_value(name)}", f'status = "{UNIDENTIFIED}"',
            f"summary = {_toml_value(UNIDENTIFIED_SUMMARY)}", "",
            "# Added by `huatuo convert all` for this bundle",
            *_toml_table("bundle", {"name": name, "bundle_name": bundle_name, "match": match.reason,
                                    "architecture": architecture, "hf_architecture": hf_architecture,
                                    "source_config_sha256": config_sha256, "quantization": quantization,
                                    "created": created}),
            FENCE]
    body = [
        f"# {name}", "",
        f"**{UNIDENTIFIED_SUMMARY}**", "",
        "huatuo compared this checkpoint with the model cards it knows and none applies:", "",
        f"- {match.reason}", "",
        "Nothing is known here of its training data, evaluation, licence or fitness for any clinical",
        "use. The fidelity figures below say only that the bundle computes what the checkpoint computes;",
        "they say nothing about whether its answers are right. Ask its provider for a model card.", "",
        "## What was found", "",
        f"- architecture: `{hf_architecture}` (huatuo `{architecture}`)",
        f"- source `config.json` sha256: `{config_sha256}`", "",
        "## This bundle", "",
        f"- bundle `{bundle_name}`, language model quantization **{quantization}**, built {created}",
        "- measured while it was built (all figures in `manifest.json`, key `fidelity`):",
        "", "```", measured.strip("\n"), "```", "",
    ]
    return "\n".join(head) + "\n" + "\n".join(body)
