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


def obscore_datalink_descriptor(datalink_url: str, *, rubin: bool) -> str:
    """The descriptor TAP attaches to ObsCore results: empty inputParams on the RSP."""
    params = [] if rubin else [InputParam("ID", ref="obs_publisher_did", ucd="meta.id;meta.main")]
    return service_descriptor(DATALINK_STANDARD, datalink_url, params, name="datalink")
