"""Errors caused by the user's input. The CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input: the message names the file, line or field and says how to fix it."""


class ConfigError(UserError, ValueError):
    pass


class DataError(UserError, ValueError):
    pass


class ModelLoadError(UserError):
    pass


def one_line(err: Exception) -> str:
    """Hydra's (or OmegaConf's) message on one line, without its search path listing."""
    text = str(err).split("Config search path:")[0]
    lines = [l.strip().rstrip(".") for l in text.splitlines() if l.strip()]
    cause = err.__cause__
    if cause is not None and getattr(cause, "msg", None):
        lines.append(f"{cause.full_key}: {cause.msg.splitlines()[0]}" if cause.full_key
                     else cause.msg.splitlines()[0])
    return "; ".join(lines)
