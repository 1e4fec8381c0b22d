"""How the embedded archive reads the IVOA standards: one switch per known server dialect.

Real ObsTAP services each follow the standards in their own way. The archive can speak
each way that is known from public documentation and client code, so a client is tested
against all of them offline. Every switch defaults to the archive's plain, standard
behaviour; ``Dialect.parse(["capabilities=untyped", "files=fz"])`` turns some on:

- ``capabilities``: ``typed`` (``xsi:type="tr:TableAccess"`` with ``language``) or
  ``untyped`` (the TAP ``standardID`` with interfaces, upload methods and limits, but no
  ``xsi:type`` and no ``language`` element);
- ``table_case``: ``mixed`` (``ivoa.ObsCore`` as the RSP names it, any case accepted) or
  ``lower`` (only ``ivoa.obscore`` is found, as case-sensitive servers do), or ``upper``
  (result column names in upper case, as some database back ends give them);
- ``serialization``: ``binary2`` (VOTable 1.4, ``application/x-votable+xml``, BINARY2
  when ``RESPONSEFORMAT`` asks for it, TABLEDATA when nothing is asked; ``QUERY_STATUS``
  before the table) or ``tabledata`` (VOTable 1.3 TABLEDATA whatever was asked, served as
  ``application/xml``, the one ``QUERY_STATUS`` after the table);
- ``s_region_dialect``: ``stcs`` (``POLYGON ICRS ...``), ``stcs-j2000`` (ESO's
  ``POLYGON J2000 ...``, mixed case), ``union`` (ALMA's ``Union ICRS (Polygon ...)``),
  ``dali`` (DALI ``xtype="polygon"`` double arrays) or ``null`` (NULL ``s_region`` on
  some rows, ``s_ra``/``s_dec``/``s_fov`` set);
- ``files``: ``fits`` (plain), ``fz`` (tile-compressed, ``.fits.fz``), ``gz``
  (gzip, ``.fits.gz``, ``application/x-gzip``) or ``gz-encoded`` (gzip bytes of a
  ``.fits`` URL sent with ``Content-Encoding: gzip``, as S3 objects with that metadata);
- ``upload``: ``on`` or ``off`` (no ``TAP_UPLOAD`` advertised nor accepted);
- ``async``: ``on``, ``inline`` (the job completes inside the ``PHASE=RUN`` POST),
  ``deferred`` (``PHASE=RUN`` in the creating POST is not heard: the job stays
  ``PENDING`` until ``POST .../phase``) or ``off`` (no ``/async`` endpoint: 404);
- ``sync``: ``any`` or ``post`` (the sync endpoint only accepts POST: 405 to GET);
- ``errors``: ``votable`` (DALI error documents) or ``text`` (HTTP 400 with plain text,
  a Python dict's repr for unknown names and uploads; a job's error document as text);
- ``soda``: ``cutout`` (a ``#cutout`` link) or ``proc`` (a ``#proc`` link whose
  service descriptor declares the SODA ``standardID``, as GAVO DaCHS does);
- ``upload_join``: ``ok`` or ``broken`` (an upload joined on ``CONTAINS`` answers 500);
- ``or_limit``: the most ``OR``-ed conditions a query may hold (0: no limit); more
  answers HTTP 400, as servers with a query-size limit do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import ClassVar

# errors about a name the service does not know (a table, a column) or an upload: these
# are the ones ``errors=text`` words as a Python dict's repr, the rest as plain text
_NAMING_ERROR = re.compile(r"does not exist|not found|\bupload", re.IGNORECASE)


@dataclass(frozen=True)
class Dialect:
    capabilities: str = "typed"
    table_case: str = "mixed"
    serialization: str = "binary2"
    s_region_dialect: str = "stcs"
    files: str = "fits"
    upload: str = "on"
    async_: str = "on"
    sync: str = "any"
    errors: str = "votable"
    soda: str = "cutout"
    upload_join: str = "ok"
    or_limit: int = 0

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "capabilities": ("typed", "untyped"),
        "table_case": ("mixed", "lower", "upper"),
        "serialization": ("binary2", "tabledata"),
        "s_region_dialect": ("stcs", "stcs-j2000", "union", "dali", "null"),
        "files": ("fits", "fz", "gz", "gz-encoded"),
        "upload": ("on", "off"),
        "async_": ("on", "inline", "deferred", "off"),
        "sync": ("any", "post"),
        "errors": ("votable", "text"),
        "soda": ("cutout", "proc"),
        "upload_join": ("ok", "broken"),
    }

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"dialect {name.rstrip('_')}={value!r} is not one of {', '.join(allowed)}"
                )
        if self.or_limit < 0:
            raise ValueError(f"dialect or_limit={self.or_limit} must be 0 or more")

    @classmethod
    def parse(cls, items: list[str] | tuple[str, ...]) -> Dialect:
        """``["files=fz", "async=inline"]`` → a Dialect; raises ValueError naming the item."""
        known = {f.name.rstrip("_"): f.name for f in fields(cls)}
        values: dict[str, object] = {}
        for item in items:
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in known:
                raise ValueError(
                    f"dialect {item!r}: expected one of {', '.join(sorted(known))} as key=value"
                )
            if key == "or_limit":
                if not value.isdigit():
                    raise ValueError(f"dialect {item!r}: or_limit takes a whole number")
                values[known[key]] = int(value)
            else:
                values[known[key]] = value
        return cls(**values)  # type: ignore[arg-type]

    def describe(self) -> list[str]:
        """The switches that differ from the default, as ``key=value`` (for logs and ids)."""
        plain = Dialect()
        return [
            f"{f.name.rstrip('_')}={getattr(self, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(plain, f.name)
        ]


def plain_error(message: str, status: int = 400) -> str:
    """An error as ``errors=text`` servers word it: half of the kinds (unknown tables and
    columns, upload problems) as the repr of a Python dict, as some web frameworks answer
    (``{'error': 'Table ivoa.foo not found', 'code': 400}``), the others (syntax,
    parameters) as the bare message. Chosen by kind, so a test knows which it gets."""
    if _NAMING_ERROR.search(message):
        return repr({"error": message, "code": status})
    return message
