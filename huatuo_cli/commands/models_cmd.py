"""`huatuo models list | info | verify`: what bundles are installed and whether they are intact."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from huatuo_cli.bundles.bundle import VerifiedCache, check_metadata, read_manifest, verify_files, verify_signature
from huatuo_cli.bundles.locate import as_model, find_bundle, installed_bundles, models_dirs
from huatuo_cli.bundles.model_card import read_bundle_card, summary_lines
from huatuo_cli.errors import HuatuoError


@click.group()
def models() -> None:
    """List, describe and verify model bundles.

    \b
    Examples:
      huatuo models list
      huatuo models info ~/.local/share/huatuo/models/huatuo-7b-q4_k_m
      huatuo models verify /srv/bundles/huatuo-7b-q4_k_m
    """


@models.command("list")
def list_() -> None:
    """Bundles in the default models folders (without re-hashing; use `verify` for that).

    \b
    Example:
      huatuo models list
    """
    bundles = installed_bundles()
    if not bundles:
        click.echo("no bundles installed in " + " or ".join(str(d) for d in models_dirs()))
        return
    speeds = _speeds(bundles)
    table = Table("bundle", "model:tag", "architecture", "quantization", "model sha256", "this CPU", "path")
    for path in bundles:
        manifest, digest = read_manifest(path)
        try:  # the LLM file's header is the authority; an edited manifest is not shown as fact
            contradicted = bool(check_metadata(path, manifest))
        except HuatuoError:
            contradicted = True
        unverified = "? (run models verify)"
        model = as_model(path)
        table.add_row(path.name, model.ref if model and not contradicted else "?", unverified if contradicted else manifest.architecture,
                      unverified if contradicted else manifest.quantization, digest[:12], speeds.get(path, ""), str(path))
    Console().print(table)


def _speeds(bundles: list[Path]) -> dict[Path, str]:
    """The speed probe's figures for this CPU where measured (`huatuo doctor` measures), and which
    quantization a model name without a tag gets here."""
    from huatuo_cli.engine import quant_probe

    try:
        measured = {m.path: m for m in quant_probe.measure(bundles, run=False)}
    except HuatuoError as exc:  # no llama.cpp here, or an unreadable manifest
        return dict.fromkeys(bundles, f"? ({str(exc)[:60]})")
    out = {path: m.probe.line() if m.probe else "not measured (huatuo doctor)" for path, m in measured.items()}
    groups: dict[tuple[str, str], list[Path]] = {}
    for model in filter(None, map(as_model, bundles)):
        groups.setdefault((model.name, model.source), []).append(model.path)
    for (name, _), paths in groups.items():
        order = quant_probe.ranked([measured[p] for p in paths])
        if len(paths) > 1 and len(order) == len(paths):
            out[order[0].path] += f"; fastest here: `--model {name}` uses it"
    return out


@models.command()
@click.argument("bundle", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(bundle: str | None, as_json: bool) -> None:
    """Show a bundle's manifest and model card: source, prompt format, quantization, fidelity figures,
    and its last `huatuo eval` (BUNDLE.eval.json beside the bundle) if any.

    The model card summary (what the model is, its licence, how the checkpoint was identified,
    fine-tuning) is read from the bundle's MODEL_CARD.md after checking its sha256.

    \b
    Example:
      huatuo models info /srv/bundles/huatuo-7b-q4_k_m --json
    """
    path = find_bundle(bundle, option="BUNDLE")
    manifest, digest = read_manifest(path)
    contradictions = check_metadata(path, manifest)  # nothing the LLM file contradicts is shown as fact
    if contradictions:
        raise HuatuoError(f"bundle {Path(path).name}: " + "; ".join(contradictions),
                          hint="the manifest was edited; re-copy the bundle from the conversion server")
    if as_json:
        click.echo(json.dumps({"model_sha256": digest, "bundle": Path(path).name, **json.loads(manifest.to_json())}, indent=2))
        return
    click.echo(f"bundle:        {path}")
    click.echo(f"model sha256:  {digest}")
    click.echo(f"architecture:  {manifest.architecture}")
    click.echo(f"source:        {manifest.source}")
    click.echo(f"prompt format: {manifest.prompt_format}")
    if "tokens_per_image" in manifest.vision:
        click.echo(f"image:         {manifest.vision.get('image_size')} px, {manifest.vision['tokens_per_image']} "
                   "prompt positions each")
    click.echo(f"quantization:  {manifest.quantization}")
    for line in summary_lines(read_bundle_card(path, manifest), manifest):
        click.echo(line)
    for entry in manifest.files:
        click.echo(f"  {entry.role:12s} {entry.path}  {entry.size} bytes  sha256 {entry.sha256[:16]}…")
    for name, figures in manifest.fidelity.items():
        click.echo(f"fidelity {name}: {json.dumps(figures, sort_keys=True)}")
    from huatuo_cli.evaluation.report import last_lines, read_last

    last = read_last(Path(path))  # beside the bundle, not in it (`huatuo eval` writes it; bundles are hashed)
    for line in last_lines(last) if last else []:
        click.echo(line)


@models.command()
@click.argument("bundle", required=False)
def verify(bundle: str | None) -> None:
    """Re-hash every file of a bundle against its manifest; exit 1 on any mismatch.

    \b
    Example:
      huatuo models verify /srv/bundles/huatuo-7b-q4_k_m
    """
    path = find_bundle(bundle, option="BUNDLE")
    manifest, digest = read_manifest(path)
    signed_by = verify_signature(path, digest)
    problems = verify_files(path, manifest, VerifiedCache(trust=False))  # always a full re-hash
    bad = {p.split(":")[0] for p in problems}
    for entry in manifest.files:
        click.echo(f"{'FAIL' if entry.path in bad else 'ok  '} {entry.path}")
    if problems:
        raise HuatuoError(f"bundle {Path(path).name} failed verification: " + "; ".join(problems))
    click.echo(f"bundle {Path(path).name} verified: {len(manifest.files)} files match the manifest; "
               + (f"signed by trusted key {signed_by}" if signed_by else "signatures not enforced (no trusted key)"))
