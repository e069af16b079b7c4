"""The click commands of `huatuo`, one `*_cmd.py` each, loaded lazily by name (`huatuo_cli.cli.SUBCOMMANDS`)."""
