"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class HaxError(ValueError):
    """A user-facing error: bad input, a missing file, an impossible request.

    The message is one line that names the bad value and what is allowed, e.g.
    ``--levels 0: must be at least 1``. Library code raises it; ``hax_ssm.cli.main`` prints it
    as ``hax: error: <message>`` and exits with status 2. Because it subclasses ValueError,
    library users can catch it as such.
    """


def require(condition: bool, message: str) -> None:
    """Raise HaxError(message) unless condition holds."""
    if not condition:
        raise HaxError(message)
