"""`huatuo tui`: the Textual workstation app (browse studies, look at the scan, talk with the model).

The only package of the runtime that imports textual (tests/test_runtime_seams.py checks it): the
imaging, engine, audit and privacy code it drives is the same the headless commands use.
"""

#: how images may be drawn (`--graphics`): textual-image's detection, or one method forced
GRAPHICS = ("auto", "kitty", "sixel", "halfblock")
