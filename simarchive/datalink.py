"""Datalink ``links`` responses: per ID, a ``#this`` row with a signed URL to the file.

Several IDs may be asked in one request (GET with repeated ``ID`` or POST); an unknown ID
is not an HTTP error but a row carrying ``error_message``, as DataLink 1.1 §3.4 and the
RSP do, so one bad ID never hides the others.

Older or simpler services bend this: some answer only the first of several IDs, and
rows need not come grouped by ID in the order asked. The archive can do both
(``datalink_multi_id="first"``, ``datalink_order="shuffled"`` with :func:`scramble`), so a
client that assumes one row block per ID in request order is caught.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.table import MaskedColumn, Table

from obsharvest.simarchive.votable import results_votable

THIS = "#this"
CUTOUT = "#cutout"
PROC = "#proc"
FITS_CONTENT_TYPE = "application/fits"

_COLUMNS = [  # name, ucd, description
    ("ID", "meta.id;meta.main", "Input identifier"),
    ("access_url", "meta.ref.url", "Link to data or processing service"),
    ("service_def", "meta.ref", "Reference to the service descriptor resource"),
    ("error_message", "meta.code.error", "Error if an access_url cannot be created"),
    ("semantics", "meta.code", "Term from a controlled vocabulary describing the link"),
    ("description", "meta.note", "Human-readable text describing this link"),
    ("content_type", "meta.code.mime", "Mime-type of the content the link returns"),
    ("content_length", "phys.size;meta.file", "Size of the download the link returns"),
]


@dataclass(frozen=True)
class Link:
    id: str
    access_url: str = ""
    service_def: str = ""
    error_message: str = ""
    semantics: str = ""
    description: str = ""
    content_type: str = ""
    content_length: int | None = None


def links_for(
    ids: Sequence[str],
    lookup: Callable[[str], object | None],
    sign: Callable[[object], str],
    size: Callable[[object], int],
    cutout_service: str | None = None,
    content_type: str = FITS_CONTENT_TYPE,
    proc_services: Mapping[str, str] | None = None,
) -> list[Link]:
    """The links of each ID, consecutive per ID as DataLink requires.

    Processed images (not raws, as on the RSP) also get a ``#cutout`` row pointing at the
    SODA descriptor ``cutout_service``, or, given ``proc_services`` (ID → descriptor
    resource ID), a ``#proc`` row pointing at that ID's own SODA descriptor, as GAVO
    DaCHS offers SODA.
    """
    links = []
    for ident in ids:
        product = lookup(ident)
        if product is None:
            links.append(
                Link(ident, error_message=f"NotFoundFault: {ident} is not a known dataset")
            )
            continue
        links.append(
            Link(
                ident,
                access_url=sign(product),
                semantics=THIS,
                description=f"Primary image or observation data file ({product.subtype})",
                content_type=content_type,  # of the file as served (gzip: application/x-gzip)
                content_length=size(product),
            )
        )
        if proc_services is not None and product.calib_level >= 2:
            links.append(  # GAVO DaCHS: SODA as a #proc link, its descriptor one per ID
                Link(
                    ident,
                    service_def=proc_services[ident],
                    semantics=PROC,
                    description="An interactive service on this dataset.",
                )
            )
        elif cutout_service and product.calib_level >= 2:
            links.append(
                Link(
                    ident,
                    service_def=cutout_service,
                    semantics=CUTOUT,
                    description="Cutout of the image through the SODA service",
                    content_type=FITS_CONTENT_TYPE,
                )
            )
    return links


def _grouped(links: Sequence[Link]) -> bool:
    """Whether each ID's rows are consecutive."""
    seen: set[str] = set()
    previous = None
    for link in links:
        if link.id != previous:
            if link.id in seen:
                return False
            seen.add(link.id)
            previous = link.id
    return True


def scramble(links: Sequence[Link], seed: int) -> list[Link]:
    """The same rows out of order, a pure function of (seed, rows).

    Rows of several IDs are interleaved so that some ID's rows are split up whenever that
    is possible (an ID with two rows); otherwise they are at least not in the order asked.
    The rows of a single ID keep their order.
    """
    ids = list(dict.fromkeys(link.id for link in links))
    if len(ids) < 2:
        return list(links)
    rng = random.Random(f"{seed}:" + "\n".join(ids))
    out = list(links)
    splittable = len(out) > len(ids)
    for _ in range(64):
        rng.shuffle(out)
        if not _grouped(out) if splittable else out != list(links):
            return out
    return list(reversed(links))


def links_votable(links: Sequence[Link], resources: tuple[str, ...] = ()) -> bytes:
    table = Table()
    for name, ucd, description in _COLUMNS:
        values = [getattr(link, name.lower() if name == "ID" else name) for link in links]
        if name == "content_length":
            data = np.array([v or 0 for v in values], dtype=np.int64)
            col = MaskedColumn(data, name=name, mask=[v is None for v in values], unit=u.byte)
        else:
            col = MaskedColumn(
                np.array(values, dtype=str) if values else np.array([], dtype="U1"), name=name
            )
        col.description = description
        col.meta["ucd"] = ucd
        table.add_column(col)
    return results_votable(table, field_ids=frozenset({"ID"}), resources=resources)
