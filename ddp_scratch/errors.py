"""User-facing errors: the CLI turns these into one line on stderr and exit status 2."""


class UserError(Exception):
    """Bad input from the user (config, CLI, data files, checkpoints): not a bug, no traceback."""

    exit_code = 2
    collective = False   # True when every rank raises it at the same point (reported by rank 0 only)


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass
