"""User-facing errors: one line that names the thing that is wrong and how to fix it.

`python -m db3d` prints `db3d: error: <message>` and exits 2 for these; anything else is a bug
and keeps its traceback.
"""


class Db3dError(Exception):
    """Bad input, bad config or a missing model: the message is shown to the user as is."""


class ConfigError(Db3dError):
    pass


class DataError(Db3dError):
    pass


class ModelNotFoundError(Db3dError):
    pass
