"""Delivery to a PACS: `huatuo send` and `huatuo batch --send` (DIMSE C-STORE or DICOMweb STOW-RS).

destination: where (`--to`, `[pacs.NAME]`); files: what; dimse / stow: how; ledger: what already
arrived; sender: the loop with retries; cmd: the click command. See docs/pacs.md.
"""
