"""The click commands `huatuo convert` and `huatuo finetune` (`*_cmd.py`), registered by name in `huatuo_cli.cli.SUBCOMMANDS`."""
