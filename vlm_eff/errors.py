"""The one error type users see as a one-line message (the entry scripts print it and exit 2)."""


class ConfigError(ValueError):
    """A bad value in the config or on the command line; the message names it and what is allowed."""
