"""VOSI documents: capabilities (with TAPRegExt), tables and availability.

Clients learn from ``/capabilities`` which ADQL geometry functions a service has — the
RSP advertises no INTERSECTS — and its default and hard MAXREC, so these documents are
generated from the same settings that govern the ADQL engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from xml.sax.saxutils import escape, quoteattr

from obsharvest.simarchive.tapschema import PublishedTable, votable_datatype

_NS = (
    'xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0" '
    'xmlns:vr="http://www.ivoa.net/xml/VOResource/v1.0" '
    'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
    'xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
)
GEOMETRY_FEATURES = "ivo://ivoa.net/std/TAPRegExt#features-adqlgeo"


def capabilities_xml(
    tap_url: str,
    *,
    geometry_functions: Iterable[str],
    maxrec_default: int,
    maxrec_hard: int,
    execution_duration: int,
    retention_period: int,
    upload_limit_bytes: int,
    untyped: bool = False,
    upload: bool = True,
) -> str:
    """The VOSI capabilities, typed as TAPRegExt says (``xsi:type="tr:TableAccess"`` with a
    ``language``) or, ``untyped``, as some servers write them: the TAP standardID with its
    interface, upload methods and limits, no ``xsi:type``, no ``language``."""
    features = "".join(
        f"        <feature><form>{escape(f)}</form></feature>\n" for f in geometry_functions
    )

    def vosi(standard: str, path: str) -> str:
        return (
            f'  <capability standardID="ivo://ivoa.net/std/VOSI#{standard}">\n'
            f'    <interface xsi:type="vs:ParamHTTP" role="std">\n'
            f'      <accessURL use="full">{escape(tap_url)}/{path}</accessURL>\n'
            "    </interface>\n  </capability>\n"
        )

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<vosi:capabilities {_NS}>\n"
        + (
            '  <capability standardID="ivo://ivoa.net/std/TAP">\n'
            if untyped
            else '  <capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">\n'
        )
        + '    <interface xsi:type="vs:ParamHTTP" role="std" version="1.1">\n'
        f'      <accessURL use="base">{escape(tap_url)}</accessURL>\n'
        "    </interface>\n"
        + (
            ""
            if untyped
            else "    <language>\n"
            "      <name>ADQL</name>\n"
            '      <version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version>\n'
            "      <description>ADQL 2.0</description>\n"
            f"      <languageFeatures type={quoteattr(GEOMETRY_FEATURES)}>\n"
            f"{features}"
            "      </languageFeatures>\n"
            "    </language>\n"
        )
        + '    <outputFormat ivo-id="ivo://ivoa.net/std/TAPRegExt#output-votable-td">\n'
        "      <mime>application/x-votable+xml</mime>\n      <alias>votable</alias>\n"
        "    </outputFormat>\n"
        '    <outputFormat ivo-id="ivo://ivoa.net/std/TAPRegExt#output-votable-binary2">\n'
        "      <mime>application/x-votable+xml;serialization=BINARY2</mime>\n"
        "      <alias>votable/b2</alias>\n"
        "    </outputFormat>\n"
        + (
            '    <uploadMethod ivo-id="ivo://ivoa.net/std/TAPRegExt#upload-inline"/>\n'
            if upload
            else ""
        )
        + f"    <retentionPeriod><default>{retention_period}</default></retentionPeriod>\n"
        f"    <executionDuration><default>{execution_duration}</default></executionDuration>\n"
        "    <outputLimit>\n"
        f'      <default unit="row">{maxrec_default}</default>\n'
        f'      <hard unit="row">{maxrec_hard}</hard>\n'
        "    </outputLimit>\n"
        f'    <uploadLimit><hard unit="byte">{upload_limit_bytes}</hard></uploadLimit>\n'
        "  </capability>\n"
        + vosi("capabilities", "capabilities")
        + vosi("availability", "availability")
        + vosi("tables", "tables")
        + "</vosi:capabilities>\n"
    )


def tables_xml(published: Iterable[PublishedTable]) -> str:
    by_schema: dict[str, list[PublishedTable]] = {}
    for table in published:
        by_schema.setdefault(table.schema, []).append(table)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
        'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
    ]
    for schema, tables in by_schema.items():
        out.append(f"  <schema>\n    <name>{escape(schema)}</name>\n")
        for table in tables:
            out.append(
                '    <table type="table">\n'
                f"      <name>{escape(table.name)}</name>\n"
                f"      <description>{escape(table.description)}</description>\n"
            )
            for name in table.data.colnames:
                col = table.data[name]
                datatype = votable_datatype(col)
                arraysize = col.meta.get("arraysize", "*" if datatype == "char" else None)
                size_attr = f" arraysize={quoteattr(arraysize)}" if arraysize else ""
                if col.meta.get("xtype"):  # VODataService's name for a DALI xtype
                    size_attr += f" extendedType={quoteattr(col.meta['xtype'])}"
                out.append(
                    "      <column>\n"
                    f"        <name>{escape(name)}</name>\n"
                    f"        <description>{escape(col.description or '')}</description>\n"
                    + (f"        <unit>{escape(str(col.unit))}</unit>\n" if col.unit else "")
                    + (
                        f"        <ucd>{escape(col.meta['ucd'])}</ucd>\n"
                        if col.meta.get("ucd")
                        else ""
                    )
                    + (
                        f"        <utype>{escape(col.meta['utype'])}</utype>\n"
                        if col.meta.get("utype")
                        else ""
                    )
                    + f'        <dataType xsi:type="vs:VOTableType"{size_attr}>{datatype}</dataType>\n'
                    "      </column>\n"
                )
            out.append("    </table>\n")
        out.append("  </schema>\n")
    out.append("</vosi:tableset>\n")
    return "".join(out)


def availability_xml(available: bool = True, note: str = "service is accepting queries") -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">\n'
        f"  <vosi:available>{'true' if available else 'false'}</vosi:available>\n"
        f"  <vosi:note>{escape(note)}</vosi:note>\n"
        "</vosi:availability>\n"
    )
