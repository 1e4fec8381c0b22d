"""The embedded archive's ADQL engine: parse (sqlglot), scope, evaluate over numpy columns."""

try:
    import sqlglot  # noqa: F401 - the one dependency of the archive's extra
except ImportError as exc:  # the wheel carries the archive; its parser comes with the extra
    raise ImportError(
        "the embedded archive needs sqlglot: pip install 'obsharvest[archive]'"
    ) from exc
