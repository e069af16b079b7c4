"""All-or-nothing output files and folders for the converter.

A conversion that fails (bad checkpoint, failed verification, disk full, Ctrl-C) must leave no
half-written model where a user or a bundle builder would pick it up, and a killed one (kill -9)
leaves hidden temp files that the next writer of the same output removes. The implementation is
the runtime's (`huatuo_cli.atomic`: unique temp name beside the target carrying the writer's pid,
fsync, rename, folder fsync, temp removed on any failure); this module names what the converter
uses, so there is one writer.
"""

from __future__ import annotations

from huatuo_cli.atomic import atomic_folder as atomic_folder
from huatuo_cli.atomic import atomic_output as atomic_output
from huatuo_cli.atomic import check_target as check_target
from huatuo_cli.atomic import clean_leftovers as clean_leftovers
from huatuo_cli.atomic import fsync_file as fsync_file
from huatuo_cli.atomic import output_error as output_error
from huatuo_cli.atomic import refuse_existing as refuse_existing
from huatuo_cli.atomic import temp_path as temp_path
from huatuo_cli.atomic import write_text_atomic as write_text_atomic
