"""Which model card applies to a checkpoint, judged from its config.json (and fine-tuning record).

The cards live in `models/cards/` at the top of the repository and are installed as package data
`huatuo_convert/cards/` (pyproject.toml maps one onto the other), so an installed conversion server
has them. A card's `[identify]` front matter names the architecture, the config keys that fix the
LLaVA semantics, and the published checkpoint's dimensions; a config in transformers' -hf layout is
judged in the original layout's keys (`checkpoint.read_config`). Identification answers, in order:

- a card whose status is not "supported" (a checkpoint huatuo cannot convert yet): stop, naming the card;
- `huatuo_finetune.json` present: a fine-tune of the card with that architecture (validated);
- architecture, config keys and dimensions equal: the card applies (the weights are not compared:
  a fine-tune made elsewhere that kept the config looks the same, docs/model-cards.md);
- dimensions differ in a `huatuo convert synth` checkpoint: the card's layout, marked synthetic;
- anything else: no card applies, an unknown fine-tune or derivative; the bundle still gets a card
  that says so (`bundle_card.render_unidentified_card`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huatuo_cli.bundles.model_card import ModelCard, parse_card
from huatuo_cli.errors import HuatuoError
from huatuo_convert.checkpoint import read_config
from huatuo_convert.finetune_record import FinetuneRecord, read_finetune_record

#: config.json key `huatuo convert synth` writes: tiny random weights, real layout
SYNTHETIC_KEY = "huatuo_synthetic"
_SOURCE_CARDS = Path(__file__).resolve().parent.parent / "models" / "cards"


def cards_folder() -> Path:
    """Installed package data (`huatuo_convert/cards`), else the source tree's `models/cards`.

    A wheel carries the cards inside the package; an editable install maps only the package
    folders, so a source checkout reads the top-level folder they are built from.
    """
    installed = resources.files("huatuo_convert") / "cards"
    if installed.is_dir():
        return Path(str(installed))
    if _SOURCE_CARDS.is_dir():
        return _SOURCE_CARDS
    raise HuatuoError("no model cards found (huatuo_convert/cards is missing from this installation)",
                      hint="reinstall huatuo-cli[convert]")


def load_cards(folder: Path | None = None) -> list[ModelCard]:
    """Every card, sorted by file name."""
    folder = folder or cards_folder()
    return [parse_card(path.read_text(encoding="utf-8"), path.name) for path in sorted(folder.glob("*.md"))]


@dataclass(frozen=True)
class CardMatch:
    """The verdict: the card (or None), how it was reached, and one line saying so."""

    card: ModelCard | None
    kind: str  # "exact", "synthetic", "fine-tune" or "none"
    reason: str
    finetune: FinetuneRecord | None = None

    def manifest_entry(self) -> dict[str, Any]:
        return {"card": self.card.id if self.card else None, "match": self.kind, "reason": self.reason}


def _differences(config: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    return [f"{key} {config.get(key)!r} (card: {value!r})" for key, value in expected.items() if config.get(key) != value]


def identify(root: Path, cards: list[ModelCard] | None = None) -> CardMatch:
    """Match the checkpoint folder `root` against the cards; raises for a known unsupported model."""
    root = Path(root)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise HuatuoError(f"{root} is not a model folder: no config.json")
    # the checkpoint's one config reader: a bad config is one clear line, and transformers' -hf layout
    # is judged in the original layout's keys (the same model gets the same card)
    config = read_config(config_path)[0]
    archs = config.get("architectures") or ["(none)"]
    arch = str(archs[0])
    cards = load_cards() if cards is None else cards
    card = next((c for c in cards if c.meta.get("identify", {}).get("architecture") == arch), None)
    if card is None:
        return CardMatch(None, "none", f"no card applies: no card in models/cards is for architecture {arch} "
                                       "(an unknown fine-tune or derivative)")
    if not card.supported:
        raise HuatuoError(f"{root.name} is {card.name} by its architecture {arch}: {card.status}",
                          hint=f"see its model card models/cards/{card.id}.md; convert HuatuoGPT-Vision-7B or -34B")
    record = read_finetune_record(root)
    if record is not None:
        return CardMatch(card, "fine-tune", f"fine-tune of {card.name} recorded in {record.path.name} "
                                            f"({record.steps} steps); card derived from {card.id}", record)
    ident = card.meta["identify"]
    wrong_keys = _differences(config, ident.get("config", {}))
    if wrong_keys:
        return CardMatch(None, "none", f"no card applies: architecture {arch} as {card.name}, but config "
                                       f"{', '.join(wrong_keys)}: an unknown fine-tune or derivative")
    wrong_dims = _differences(config, ident.get("dimensions", {}))
    if wrong_dims and config.get(SYNTHETIC_KEY) is True:
        return CardMatch(card, "synthetic", f"{card.name} layout in a synthetic test checkpoint (`huatuo convert "
                                            "synth`: other dimensions, random weights; the card's figures do not apply)")
    if wrong_dims:
        return CardMatch(None, "none", f"no card applies: {card.name}'s architecture and config keys, but "
                                       f"{', '.join(wrong_dims)}: an unknown fine-tune or derivative")
    return CardMatch(card, "exact", f"{card.name}: architecture, config keys and dimensions match the published "
                                    "checkpoint (weights not compared)")
