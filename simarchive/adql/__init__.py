"""The embedded archive's ADQL engine: parse (sqlglot), scope, evaluate over numpy columns."""
