"""VOTable documents the archive returns: TAP results, Datalink tables and DALI errors.

astropy writes the tables (we do not hand-roll VOTable); this module only adds what the
IVOA protocols layer on top: the ``RESOURCE type="results"``, the ``QUERY_STATUS`` INFOs
that pyvo reads to decide between success, overflow and error, and FIELD metadata
(ucd, utype, xtype, description, ``char`` rather than ``unicodeChar``) carried in the
astropy column ``meta`` of the archive's tables. Tables are written with astropy's Python
writer, not its C one, which corrupts the heap now and then (see :func:`_python_written`).
"""

from __future__ import annotations

import io
from xml.sax.saxutils import escape

import numpy as np
from astropy.io.votable import from_table
from astropy.io.votable.tree import Info, VOTableFile
from astropy.table import Column, MaskedColumn, Table

VOTABLE_CONTENT_TYPE = "application/x-votable+xml"
_FIELD_HINTS = ("ucd", "utype", "xtype")


def _ascii_strings(table: Table) -> Table:
    """Return a copy whose unicode columns are bytes, so astropy writes ``datatype="char"``.

    Rubin's TAP declares its strings as ``char``; ``unicodeChar`` would change what clients
    see. Non-ASCII text keeps ``unicodeChar``.
    """
    out = Table(table, copy=False)
    for name in out.colnames:
        col = out[name]
        if col.dtype.kind != "U":
            continue
        try:
            data = np.char.encode(np.asarray(col), "ascii")
        except UnicodeEncodeError:
            continue
        cls = MaskedColumn if isinstance(col, MaskedColumn) else Column
        kwargs = {"mask": col.mask} if isinstance(col, MaskedColumn) else {}
        out.replace_column(
            name,
            cls(
                data,
                name=name,
                unit=col.unit,
                description=col.description,
                meta=dict(col.meta),
                **kwargs,
            ),
        )
    return out


def _python_written(votable: VOTableFile, tabledata_format: str) -> bytes:
    """The document as bytes, TABLEDATA written by astropy's Python writer, never its C one.

    astropy's C writer (``write_tabledata`` in ``io/votable/src/tablewriter.c``, unchanged
    up to 8.0.2) NUL-terminates each row at ``buf[len]`` but grows its buffer only to
    ``len`` bytes when ``len`` is a power of two: a row of exactly 256, 512, 1024 ... bytes
    writes one byte past the buffer. In pymalloc's 256/512-byte blocks that corrupts the
    neighbouring block, and the process crashes later somewhere unrelated (GC, imports).
    The Python writer gives the same bytes. The client's TAP uploads have their own copy
    of this (``obsharvest.query.obscore.votable_upload``).
    """
    buf = io.BytesIO()
    votable.to_xml(buf, tabledata_format=tabledata_format, _debug_python_based_parser=True)
    return buf.getvalue()


def results_votable(
    table: Table,
    *,
    overflow: bool = False,
    binary: bool = False,
    field_ids: frozenset[str] = frozenset(),
    resources: tuple[str, ...] = (),
    status_last: bool = False,
    version: str | None = None,
) -> bytes:
    """Serialise a query result as a TAP result document.

    ``QUERY_STATUS=OK`` precedes the table; on overflow a second ``QUERY_STATUS=OVERFLOW``
    follows it, as TAP 1.1 §4.9 asks, so a client reading to the end learns the result was
    truncated at MAXREC (pyvo takes the last status and warns ``DALOverflowWarning``).
    ``field_ids`` gives those FIELDs an XML ID (service descriptors ``ref`` them) and
    ``resources`` are extra RESOURCE elements, such as DataLink service descriptors.

    ``status_last`` writes the one ``QUERY_STATUS`` (``OK`` or ``OVERFLOW``) after the
    TABLE only, as some servers do (DALI allows either place): a client that reads the
    status before the rows, or only the first one, misses the overflow. ``version`` is the
    VOTable version written (``"1.3"`` for those servers; astropy's default otherwise).
    """
    votable = from_table(_ascii_strings(table))
    if version:
        votable.version = version
    resource = votable.resources[0]
    resource.type = "results"
    if not status_last:
        resource.infos.append(Info(name="QUERY_STATUS", value="OK"))
    for field in votable.get_first_table().fields:
        col = table[field.name] if field.name in table.colnames else None
        if col is None:
            continue
        for hint in _FIELD_HINTS:
            if col.meta.get(hint):
                setattr(field, hint, col.meta[hint])
        if col.description:
            field.description = col.description
        if field.datatype == "char":
            field.arraysize = "*"
        if field.name in field_ids:
            field.ID = field.name
    data = _python_written(votable, "binary2" if binary else "tabledata")
    if overflow or status_last:
        marker = b"</RESOURCE>"
        pos = data.rfind(marker)
        status = b"OVERFLOW" if overflow else b"OK"
        data = data[:pos] + b'<INFO name="QUERY_STATUS" value="' + status + b'"/>\n' + data[pos:]
    if resources:
        end = data.rfind(b"</VOTABLE>")
        data = data[:end] + "".join(resources).encode() + data[end:]
    return data


def error_votable(message: str) -> bytes:
    """A DALI error document: pyvo turns it into ``DALQueryError(message)``."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
        '  <RESOURCE type="results">\n'
        f'    <INFO name="QUERY_STATUS" value="ERROR">{escape(message)}</INFO>\n'
        "  </RESOURCE>\n"
        "</VOTABLE>\n"
    ).encode()
