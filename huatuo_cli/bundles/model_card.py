"""A bundle's model card (`MODEL_CARD.md`): read it, summarise it, point reports at it.

A card is Markdown with a small TOML front matter between `+++` lines, so that people read the
prose and programs read the facts (status, licence, benchmark source) with the standard library's
`tomllib`. `huatuo convert all` copies the card that matches the checkpoint into the bundle and
lists it in `manifest.json` with role `model-card`; like every bundle file it is hashed, so a card
shown to a radiologist is the one the conversion server wrote. See docs/model-cards.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (pyproject.toml: tomli>=2; python_version < '3.11')
    import tomli as tomllib

from huatuo_cli.bundles.bundle import Bundle, Manifest, sha256_file
from huatuo_cli.errors import HuatuoError

CARD_NAME = "MODEL_CARD.md"
CARD_ROLE = "model-card"
FENCE = "+++"
#: manifest.json key recording which card applied (or why none did)
MANIFEST_KEY = "model_card"
#: the status of the card `convert all` writes for a checkpoint no published card matches
UNIDENTIFIED = "unidentified"


@dataclass(frozen=True)
class ModelCard:
    """One card: its front matter (`meta`) and its Markdown body, as read."""

    meta: dict[str, Any]
    body: str
    text: str

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def status(self) -> str:
        return str(self.meta["status"])

    @property
    def supported(self) -> bool:
        return self.status == "supported"

    def section(self, heading: str) -> str:
        """The text under `## heading` (empty if the card has no such section)."""
        marker = f"## {heading}\n"
        start = self.body.find(marker)
        if start < 0:
            return ""
        rest = self.body[start + len(marker):]
        end = rest.find("\n## ")
        return (rest if end < 0 else rest[:end]).strip()


def parse_card(text: str, source: str) -> ModelCard:
    """Split and parse a card; `source` names it in errors."""
    lines = text.split("\n")
    if not lines or lines[0].strip() != FENCE:
        raise HuatuoError(f"model card {source} does not start with a '{FENCE}' front matter line")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == FENCE)
    except StopIteration:
        raise HuatuoError(f"model card {source}: front matter is not closed by a '{FENCE}' line") from None
    try:
        meta = tomllib.loads("\n".join(lines[1:end]))
    except tomllib.TOMLDecodeError as exc:
        raise HuatuoError(f"model card {source}: front matter is not valid TOML ({exc})") from exc
    for key in ("id", "name", "status", "summary"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise HuatuoError(f"model card {source}: front matter lacks '{key}'")
    return ModelCard(meta=meta, body="\n".join(lines[end + 1:]), text=text)


def read_bundle_card(root: Path, manifest: Manifest) -> ModelCard | None:
    """The bundle's card, after checking its sha256 against the manifest; None if it has none.

    `models info` reads only the manifest; the card is checked here so that no command shows a
    card that differs from the one the conversion wrote.
    """
    entry = manifest.file(CARD_ROLE)
    if entry is None:
        return None
    path = Path(root) / entry.path
    if not path.is_file():
        raise HuatuoError(f"bundle {Path(root).name}: {entry.path}: missing")
    if sha256_file(path) != entry.sha256:
        raise HuatuoError(f"bundle {Path(root).name}: {entry.path}: sha256 differs from the manifest (file modified "
                          "or corrupt)", hint="re-copy the bundle from the conversion server; never edit bundle files")
    return parse_card(path.read_text(encoding="utf-8"), entry.path)


def summary_lines(card: ModelCard | None, manifest: Manifest) -> list[str]:
    """What `huatuo models info` prints about the card: which model, what it is for, whose terms."""
    if card is None:
        why = (manifest.extra.get(MANIFEST_KEY) or {}).get("reason") or "the bundle was built without model cards"
        return [f"model card:    none ({why})"]
    meta = card.meta
    bundle = meta.get("bundle", {})
    lines = [f"model card:    {bundle.get('name') or card.name} ({CARD_NAME}, {card.status})",
             f"  summary:     {meta['summary']}"]
    if bundle.get("match"):
        lines.append(f"  identified:  {bundle['match']}")
    licence = meta.get("licence", {})
    if licence:
        lines.append(f"  licence:     weights {licence.get('weights', '?')}, code {licence.get('code', '?')}")
    if meta.get("paper", {}).get("arxiv"):
        lines.append(f"  paper:       {meta['paper'].get('venue', '')} {meta['paper']['arxiv']}".rstrip())
    tuning = bundle.get("fine_tuning")
    if tuning:
        lines.append(f"  fine-tuned:  {tuning.get('steps')} steps on {tuning.get('train_records')} records, "
                     f"eval loss {tuning.get('eval_loss', 'not measured')}")
    if card.status == UNIDENTIFIED:
        lines.append("  intended use: not stated: not identified as a published checkpoint (ask its provider)")
    else:
        lines.append("  intended use: draft answers for a qualified reader; never diagnosis or triage without review")
    return lines


def copy_card_to(bundle: Bundle, out: Path) -> Path | None:
    """Put the bundle's (verified) card beside a batch report, so the report can link to it."""
    from huatuo_cli.privacy import write_private

    card = read_bundle_card(bundle.root, bundle.manifest)
    if card is None:
        return None
    return write_private(Path(out) / CARD_NAME, card.text)


def card_link_html(out: Path) -> str:
    """A paragraph linking report.html to the card copied beside it; empty when there is none.

    The link is relative, so it works where the batch folder is opened; the model's name and
    summary are written out too, so a report mailed alone still says which model answered.
    """
    path = Path(out) / CARD_NAME
    if not path.is_file():
        return ""
    try:
        card = parse_card(path.read_text(encoding="utf-8"), CARD_NAME)
    except HuatuoError:
        return f'<p class="card">Model card: <a href="{CARD_NAME}">{CARD_NAME}</a></p>'
    name = card.meta.get("bundle", {}).get("name") or card.name
    return (f'<p class="card">Model card: <a href="{CARD_NAME}">{escape(name)}</a> &mdash; '
            f"{escape(card.meta['summary'])}</p>")
