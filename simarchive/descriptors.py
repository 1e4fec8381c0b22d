"""DataLink service descriptors: the ``RESOURCE type="meta" utype="adhoc:service"`` blocks.

They tell a client how to call a related service with values from a result row. How a
service writes them matters in practice: the RSP ships the ObsCore result's Datalink
descriptor with an empty ``inputParams`` group, which makes pyvo's ``iter_datalinks()``
fail with ``KeyError('ID')``, while generic services reference a column.
Both shapes are produced here so clients can be tested against each.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

DATALINK_STANDARD = "ivo://ivoa.net/std/DataLink#links-1.0"
SODA_SYNC_STANDARD = "ivo://ivoa.net/std/SODA#sync-1.0"
CUTOUT_SERVICE_ID = "cutout-sync"


@dataclass(frozen=True)
class InputParam:
    name: str
    datatype: str = "char"
    arraysize: str | None = "*"
    value: str = ""
    ref: str | None = None  # the FIELD (by ID) a client takes the value from, row by row
    ucd: str | None = None
    xtype: str | None = None
    unit: str | None = None
    description: str | None = None

    def to_xml(self) -> str:
        attrs = [f"name={quoteattr(self.name)}", f"datatype={quoteattr(self.datatype)}"]
        for key in ("arraysize", "ucd", "xtype", "unit", "ref"):
            value = getattr(self, key)
            if value:
                attrs.append(f"{key}={quoteattr(value)}")
        attrs.append(f"value={quoteattr(self.value)}")
        inner = f"<DESCRIPTION>{self.description}</DESCRIPTION>" if self.description else ""
        return (
            f"      <PARAM {' '.join(attrs)}>{inner}</PARAM>\n"
            if inner
            else f"      <PARAM {' '.join(attrs)}/>\n"
        )


def service_descriptor(
    standard_id: str,
    access_url: str,
    params: list[InputParam],
    *,
    resource_id: str | None = None,
    name: str | None = None,
) -> str:
    ident = f" ID={quoteattr(resource_id)}" if resource_id else ""
    label = f" name={quoteattr(name)}" if name else ""
    body = "".join(p.to_xml() for p in params)
    return (
        f'  <RESOURCE type="meta" utype="adhoc:service"{ident}{label}>\n'
        f'    <PARAM name="standardID" datatype="char" arraysize="*" value={quoteattr(standard_id)}/>\n'
        f'    <PARAM name="accessURL" datatype="char" arraysize="*" value={quoteattr(access_url)}/>\n'
        '    <GROUP name="inputParams">\n'
        f"{body}"
        "    </GROUP>\n"
        "  </RESOURCE>\n"
    )


def cutout_descriptor(access_url: str, ids: list[str]) -> str:
    """The SODA sync descriptor Datalink responses point ``#cutout`` rows at.

    With one ID (how the RSP is mostly called) the ID parameter carries the value, so
    pyvo's ``record.processed()`` on an ObsCore row works; with several it references the
    ID column instead, since one fixed value cannot serve every row.
    """
    if len(ids) == 1:
        id_param = InputParam("ID", value=ids[0], ucd="meta.id;meta.dataset")
    else:
        id_param = InputParam("ID", ref="ID", ucd="meta.id;meta.dataset")
    return service_descriptor(
        SODA_SYNC_STANDARD,
        access_url,
        [
            id_param,
            InputParam("POS", ucd="pos.outline;obs", description="Region to cut out (DALI shape)"),
            InputParam(
                "CIRCLE",
                datatype="double",
                arraysize="3",
                xtype="circle",
                unit="deg",
                ucd="phys.angArea;obs",
                description="Circle to cut out: ra dec radius",
            ),
            InputParam(
                "POLYGON",
                datatype="double",
                arraysize="*",
                xtype="polygon",
                unit="deg",
                ucd="pos.outline;obs",
                description="Polygon to cut out: ra dec pairs",
            ),
        ],
        resource_id=CUTOUT_SERVICE_ID,
    )


PROC_SERVICE_ID = "procsvc"


def proc_descriptor(access_url: str, ident: str, resource_id: str = PROC_SERVICE_ID) -> str:
    """The SODA descriptor GAVO DaCHS (2.7) points a ``#proc`` Datalink row at.

    Its shape, as DaCHS wrote it for a FITS image: ``RESOURCE ID="procsvc"
    name="proc_svc"``, the ``ID`` param carrying the dataset's ID as its value, then
    ``RA``/``DEC`` intervals, ``SCALE``, ``POS``, ``POLYGON``, ``CIRCLE``, ``PIXEL_1``/
    ``PIXEL_2`` and ``KIND``, every one with ``value=""`` (numeric ones too, which a
    VOTable parser reads as zeros), and the SODA sync standardID. One per dataset.
    """
    return service_descriptor(
        SODA_SYNC_STANDARD,
        access_url,
        [
            InputParam("ID", value=ident, ucd="meta.id;meta.main"),
            InputParam("DEC", "double", "2", ucd="pos.eq.dec", xtype="interval", unit="deg"),
            InputParam("RA", "double", "2", ucd="pos.eq.ra", xtype="interval", unit="deg"),
            InputParam("SCALE", "int", None, description="Factor to scale the image down"),
            InputParam("POS", ucd="phys.angArea;obs", description="Region to cut out"),
            InputParam(
                "POLYGON", "double", "*", ucd="phys.argArea;obs", xtype="polygon", unit="deg"
            ),
            InputParam("CIRCLE", "double", "3", ucd="phys.argArea;obs", xtype="circle", unit="deg"),
            InputParam("PIXEL_1", "int", "2", ucd="pos.cartesian.x;instr.pixel", xtype="interval"),
            InputParam("PIXEL_2", "int", "2", ucd="pos.cartesian.y;instr.pixel", xtype="interval"),
            InputParam("KIND", description="Set to HEADER to retrieve just the primary header"),
        ],
        resource_id=resource_id,
        name="proc_svc",
    )


def obscore_datalink_descriptor(
    datalink_url: str, *, rubin: bool, ref: str = "obs_publisher_did"
) -> str:
    """The descriptor TAP attaches to ObsCore results: empty inputParams on the RSP; ``ref``
    is the XML ID of the ``obs_publisher_did`` FIELD as served."""
    params = [] if rubin else [InputParam("ID", ref=ref, ucd="meta.id;meta.main")]
    return service_descriptor(DATALINK_STANDARD, datalink_url, params, name="datalink")
