"""Errors caused by the user's input. The CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input: the message names the file, line or field and says how to fix it."""


class ConfigError(UserError, ValueError):
    pass


class DataError(UserError, ValueError):
    pass


class ModelLoadError(UserError):
    pass
