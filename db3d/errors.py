"""User-facing errors: one line that names the thing that is wrong and how to fix it.

`python -m db3d` (and the `python -m db3d.bench.*` tools, through `report_errors`) prints
`db3d: error: <message>` and exits 2 for these; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class Db3dError(Exception):
    """Bad input, bad config or a missing model: the message is shown to the user as is."""


class ConfigError(Db3dError):
    pass


class DataError(Db3dError):
    pass


class ModelNotFoundError(Db3dError):
    pass


def report_errors(main: Callable[[], int]) -> int:
    """Run a command's `main`: a Db3dError becomes the one-line message and exit status 2."""
    try:
        return main()
    except Db3dError as e:
        print(f"db3d: error: {e}", file=sys.stderr)
        return 2
