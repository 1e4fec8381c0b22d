"""The single exception type the ADQL engine lets escape."""


class AdqlError(ValueError):
    """A query the engine cannot run; ``str(err)`` is a one-line message for the TAP client."""
