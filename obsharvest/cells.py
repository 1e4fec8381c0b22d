"""The cells of an ObsCore reply (an astropy Table, masked columns and all) as text.

Iterating a masked column reads each cell through ``numpy.ma`` (``MaskedArray.__getitem__``
builds a masked scalar every time): for a shard's rows that was a tenth of a plan run's
CPU (py-spy, 1000 targets). A column is converted once here, with ``tolist`` (masked
cells come out as None).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table


def text_of(value) -> str:
    """A cell of an ObsCore reply as text ("" for a masked or missing value)."""
    if value is None or value is np.ma.masked:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def texts(rows: Table, column: str) -> list[str]:
    """Every cell of ``column`` as text, in row order (all "" when there is no such column)."""
    if column not in rows.colnames:
        return [""] * len(rows)
    return [text_of(v) for v in rows[column].tolist()]
