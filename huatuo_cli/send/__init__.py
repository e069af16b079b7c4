"""Delivery to a PACS: `huatuo send` and `huatuo batch --send` (DIMSE C-STORE or DICOMweb STOW-RS).

destination: where (`--to`, `[pacs.NAME]`); files: what; dimse / stow: how; ledger: what already
arrived; sender: the loop with retries (the click command: huatuo_cli/commands/send_cmd.py). See docs/pacs.md.
"""
