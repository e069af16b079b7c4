"""`python -m huatuo_cli` runs the CLI."""

from huatuo_cli.cli import main

main()
