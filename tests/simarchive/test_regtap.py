"""The embedded archive as a RegTAP registry: the rr tables describe the services given to
it, in both ways ObsCore is declared, and an archive without a registry is unchanged."""

from __future__ import annotations

import argparse

import pytest
from pyvo.dal import TAPService

from obsharvest.simarchive import cli as archive_cli
from obsharvest.simarchive.registry import (
    OBSCORE_TABLE_UTYPE,
    TABLE_NAMES,
    RegistryEntry,
    registry_tables,
)
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

ENTRIES = (
    RegistryEntry("ivo://sim/self", None, "datamodel", "This archive"),
    RegistryEntry("ivo://sim/Utype", "http://127.0.0.1:9/tap", "utype", "Utype only"),
    RegistryEntry("ivo://sim/both", "http://127.0.0.1:10/tap", "both", "Both forms"),
    RegistryEntry("ivo://sim/plain", "http://127.0.0.1:11/tap", "none", "No ObsCore"),
)

# the two discovery queries, written as a client of any RegTAP 1.1 service would
BY_DATAMODEL = """
SELECT DISTINCT r.ivoid, i.access_url
FROM rr.resource AS r
JOIN rr.capability AS c ON c.ivoid = r.ivoid
JOIN rr.interface AS i ON i.ivoid = c.ivoid AND i.cap_index = c.cap_index
JOIN rr.res_detail AS d ON d.ivoid = c.ivoid AND d.cap_index = c.cap_index
WHERE c.standard_id LIKE 'ivo://ivoa.net/std/tap%' AND i.intf_role = 'std'
  AND d.detail_xpath = '/capability/dataModel/@ivo-id'
  AND LOWER(d.detail_value) LIKE 'ivo://ivoa.net/std/obscore%'
"""
BY_UTYPE = """
SELECT DISTINCT s.ivoid, i.access_url, t.ivoid AS collection
FROM rr.res_table AS t
JOIN rr.relationship AS rl ON rl.ivoid = t.ivoid
JOIN rr.resource AS s ON s.ivoid = rl.related_id
JOIN rr.capability AS c ON c.ivoid = s.ivoid
JOIN rr.interface AS i ON i.ivoid = c.ivoid AND i.cap_index = c.cap_index
WHERE t.table_utype LIKE 'ivo://ivoa.net/std/obscore#table-1.%'
  AND rl.relationship_type = 'isservedby'
  AND c.standard_id LIKE 'ivo://ivoa.net/std/tap%' AND i.intf_role = 'std'
"""


@pytest.fixture(scope="module")
def registry():
    with EmbeddedArchive(ArchiveSettings(n_visits=3, registry=ENTRIES)) as running:
        yield running


def _rows(service: TAPService, adql: str) -> set[tuple[str, ...]]:
    table = service.run_sync(adql).to_table()
    return {tuple(str(row[c]) for c in table.colnames) for row in table}


def test_datamodel_form_lists_the_declaring_services(registry):
    found = _rows(TAPService(registry.tap_url), BY_DATAMODEL)
    assert found == {
        ("ivo://sim/self", registry.tap_url),  # tap_url None: the archive itself
        ("ivo://sim/both", "http://127.0.0.1:10/tap"),
    }


def test_utype_form_follows_isservedby_to_the_service(registry):
    found = _rows(TAPService(registry.tap_url), BY_UTYPE)
    assert found == {  # ivoids lower-case, as RegTAP stores them
        ("ivo://sim/utype", "http://127.0.0.1:9/tap", "ivo://sim/utype/obscore"),
        ("ivo://sim/both", "http://127.0.0.1:10/tap", "ivo://sim/both/obscore"),
    }


def test_the_records_as_regtap_stores_them(registry):
    service = TAPService(registry.tap_url)
    types = _rows(service, "SELECT ivoid, res_type FROM rr.resource")
    assert ("ivo://sim/plain", "vs:catalogservice") in types
    assert ("ivo://sim/utype/obscore", "vs:catalogresource") in types
    assert len(types) == 6  # four services, two data collections
    plain = _rows(
        service,
        "SELECT c.standard_id, c.cap_type, i.access_url, i.url_use, i.intf_type "
        "FROM rr.capability AS c JOIN rr.interface AS i ON i.ivoid = c.ivoid "
        "WHERE c.ivoid = 'ivo://sim/plain'",
    )
    assert plain == {
        (
            "ivo://ivoa.net/std/tap",
            "tr:tableaccess",
            "http://127.0.0.1:11/tap",
            "base",
            "vs:paramhttp",
        )
    }
    utypes = _rows(service, "SELECT DISTINCT table_utype FROM rr.res_table")
    assert utypes == {("",), (OBSCORE_TABLE_UTYPE,)}


def test_tap_schema_and_vosi_list_the_rr_tables(registry):
    names = _rows(TAPService(registry.tap_url), "SELECT table_name FROM tap_schema.tables")
    assert {(f"rr.{n}",) for n in TABLE_NAMES} <= names
    columns = _rows(
        TAPService(registry.tap_url),
        "SELECT column_name FROM tap_schema.columns WHERE table_name = 'rr.interface'",
    )
    assert {("access_url",), ("intf_role",), ("url_use",), ("cap_index",)} <= columns


def test_no_registry_no_rr_schema(archive):
    """Without entries the archive publishes what it always did."""
    assert not [k for k in archive.tables if k.startswith("rr.")]
    names = _rows(TAPService(archive.tap_url), "SELECT schema_name FROM tap_schema.schemas")
    assert ("rr",) not in names


def test_entries_are_checked():
    with pytest.raises(ValueError, match="obscore 'maybe'"):
        RegistryEntry("ivo://sim/x", None, "maybe")
    with pytest.raises(ValueError, match="ivo://"):
        RegistryEntry("http://sim/x")
    with pytest.raises(ValueError, match="described twice"):
        registry_tables([RegistryEntry("ivo://a/b"), RegistryEntry("ivo://A/b")], "http://h/tap")


def test_the_archive_command_takes_registry_entries():
    parser = argparse.ArgumentParser()
    archive_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "archive",
            "--registry-entry",
            "ivo://sim/self",
            "self",
            "datamodel",
            "--registry-entry",
            "ivo://sim/u",
            "http://127.0.0.1:9/tap",
            "utype",
        ]
    )
    settings = archive_cli._settings(args)
    assert settings.registry == (
        RegistryEntry("ivo://sim/self", None, "datamodel"),
        RegistryEntry("ivo://sim/u", "http://127.0.0.1:9/tap", "utype"),
    )
