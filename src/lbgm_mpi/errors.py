"""Errors that end a run with a one-line message instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix (config, input file, launch); printed as one line."""


class ConfigError(UserError):
    """An invalid configuration: the message names the key and how to fix it."""


class AgreedError(UserError):
    """A UserError that every rank raises at the same point of a run (from facts all ranks share,
    such as the replicated global model), so it is reported once and no rank needs to abort."""
