"""The Parquet keeps every ObsCore value, and reads back with its units (issue 18).

Every column of the archive's ObsCore reply is stored as it came -- ObsCore's own
``target_name`` included, and an archive's extra columns -- while the harvest's columns
live under ``obsh_``; a reply that uses that namespace is refused, never overwritten.
Files written before the prefix are migrated (by a run or ``obsharvest migrate``), never
mixed with new ones. ``astropy.table.Table.read`` of a written file gives the units,
descriptions and UCDs. And for the embedded archive in each profile and naming, every
column its ``TAP_SCHEMA`` lists for ``ivoa.ObsCore`` is in the Parquet with the value a
direct TAP query returns.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import pyvo
import requests
from astropy import units as u
from astropy.io.votable import from_table, parse_single_table
from astropy.io.votable.tree import Info
from astropy.table import Table

from obsharvest.assemble import image_works, priors_from
from obsharvest.errors import MetadataFormatError, UserError
from obsharvest.flows.cli import main
from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.metadata import (
    FORMAT,
    FORMAT_KEY,
    HARVEST_COLUMNS,
    PAIR_KEY,
    PREFIX,
    MetadataStore,
    current,
    file_format,
    migrated,
    obscore_to_arrow,
    with_harvest_columns,
)
from obsharvest.models import Target
from obsharvest.query.adql import TARGET_COLUMN
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from tests.conftest import TARGET_DEC, TARGET_RA
from tests.crafted_server import CraftedServer, Reply
from tests.obscore_check import assert_every_obscore_column_kept, parquet_files

ARCHIVE_TARGET = "FIELD-62-37"  # what the archive says it pointed at (ObsCore's target_name)


def read_rows(output) -> list[dict]:
    """The current view: one row per (target, image) pair, the newest (files of the old
    format read as if migrated)."""
    table = MetadataStore(str(output)).read()
    return table.to_pylist() if table is not None else []


def as_format_1(table: pa.Table) -> pa.Table:
    """The same rows as obsharvest wrote them before the prefix: the harvest's target name
    in ``target_name`` (ObsCore's dropped), its columns unprefixed, no schema metadata."""
    table = table.drop_columns(["target_name"])
    fields = [
        pa.field(f.name.removeprefix(PREFIX), f.type, metadata=f.metadata) for f in table.schema
    ]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields))


def rewrite_as_format_1(output) -> None:
    """The output as the old writer left it: one ``obscore.parquet`` per partition."""
    by_dir: dict[Path, list[Path]] = {}
    for path in parquet_files(output):
        by_dir.setdefault(path.parent, []).append(path)
    for directory, paths in by_dir.items():
        table = pa.concat_tables([pq.read_table(p) for p in paths])
        for path in paths:
            path.unlink()
        pq.write_table(as_format_1(table), directory / "obscore.parquet")


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _obscore(**extra) -> pa.Table:
    """Two ObsCore rows of a made-up archive, its target_name set, with extra columns."""
    columns = {
        "obs_publisher_did": ["ivo://x/a", "ivo://x/b"],
        "target_name": [ARCHIVE_TARGET, None],
        "s_ra": [62.0, 62.1],
        "dataproduct_subtype": ["lsst.calexp", "lsst.calexp"],
        "lsst_band": ["i", "i"],
        **extra,
    }
    return pa.table(columns)


def _harvest_values(names=("seed", "seed")) -> dict[str, list]:
    return {"obsh_target_name": list(names), "obsh_verdict": ["contains", "outside"]}


# ------------------------------------------------------------------ naming and collisions


def test_every_harvest_column_is_in_the_obsh_namespace():
    assert PREFIX == "obsh_" and TARGET_COLUMN.startswith(PREFIX)
    assert all(name.startswith(PREFIX) for name in HARVEST_COLUMNS)
    assert PAIR_KEY == ("obsh_target_name", "obs_publisher_did")


def test_obscore_target_name_and_extras_stay_beside_the_harvest_columns():
    obscore = _obscore(dachs_quality=pa.array([1, None], pa.int16()))
    table = with_harvest_columns(obscore, _harvest_values())
    assert table.column_names == obscore.column_names + HARVEST_COLUMNS
    for name in obscore.column_names:  # name, type and values as they came
        assert table.schema.field(name).type == obscore.schema.field(name).type
        assert table.column(name).to_pylist() == obscore.column(name).to_pylist()
    assert table.column("target_name").to_pylist() == [ARCHIVE_TARGET, None]
    assert table.column("obsh_target_name").to_pylist() == ["seed", "seed"]


@pytest.mark.parametrize("clash", ["obsh_verdict", "obsh_target_name", "OBSH_Extra", "obsh_"])
def test_a_reply_column_in_the_harvest_namespace_is_refused_in_one_line(clash):
    obscore = _obscore(**{clash: ["archive's", "own"]})
    with pytest.raises(MetadataFormatError) as error:
        with_harvest_columns(obscore, _harvest_values())
    message = one_line(str(error.value))
    assert repr(clash) in message and "refusing to overwrite" in message
    # ... and before any image work: image_works looks at the query's rows first
    rows = Table({c: obscore.column(c).to_pylist() for c in obscore.column_names})
    rows[TARGET_COLUMN] = ["seed", "seed"]
    rows["access_url"] = ["http://x/a", "http://x/b"]
    rows["obs_id"] = ["a", "b"]
    with pytest.raises(MetadataFormatError):
        image_works(rows, {"seed": Target("seed", 62.0, -37.0)}, {})
    assert issubclass(MetadataFormatError, UserError)  # the CLI prints it as one line, exit 2


def test_unknown_harvest_values_are_a_bug_not_a_silent_drop():
    with pytest.raises(ValueError, match="obsh_verdikt"):
        with_harvest_columns(_obscore(), {"obsh_verdikt": ["contains", "outside"]})


# ------------------------------------------------------------------ VOTable types as sent

VOTABLE = """<?xml version="1.0" encoding="utf-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
 <RESOURCE type="results"><TABLE>
  <FIELD name="obs_publisher_did" datatype="char" arraysize="*" ucd="meta.ref.ivoid"/>
  <FIELD name="s_region" datatype="double" arraysize="*" xtype="polygon" unit="deg"
         ucd="pos.outline;obs.field"><DESCRIPTION>DALI polygon</DESCRIPTION></FIELD>
  <FIELD name="s_ra" datatype="double" unit="deg" ucd="pos.eq.ra"/>
  <FIELD name="em_xel" datatype="long"><VALUES null="-1"/></FIELD>
  <FIELD name="pol_xel" datatype="short"><VALUES null="-1"/></FIELD>
  <FIELD name="x_point" datatype="float" arraysize="2" xtype="point" unit="deg"/>
  <FIELD name="x_flag" datatype="boolean"/>
  <FIELD name="target_name" datatype="unicodeChar" arraysize="*"/>
  <DATA><TABLEDATA>
   <TR><TD>ivo://x/a</TD><TD>61.9 -37.1 62.1 -37.1 62.1 -36.9</TD><TD>62.0</TD>
       <TD>7</TD><TD>-1</TD><TD>62.5 -37.25</TD><TD>T</TD><TD>M 31 Ω</TD></TR>
   <TR><TD>ivo://x/b</TD><TD></TD><TD>62.1</TD>
       <TD>-1</TD><TD>3</TD><TD></TD><TD>F</TD><TD></TD></TR>
  </TABLEDATA></DATA>
 </TABLE></RESOURCE>
</VOTABLE>
"""


def test_votable_values_and_types_are_kept_arrays_included(tmp_path):
    rows = parse_single_table(io.BytesIO(VOTABLE.encode())).to_table()
    table = obscore_to_arrow(rows)
    types = {f.name: f.type for f in table.schema}
    assert types["s_region"] == pa.list_(pa.float64())  # a DALI polygon, not its repr
    assert types["x_point"] == pa.list_(pa.float32(), 2)
    assert types["em_xel"] == pa.int64() and types["pol_xel"] == pa.int16()
    assert types["x_flag"] == pa.bool_() and types["target_name"] == pa.string()
    first, second = table.to_pylist()
    assert first["s_region"] == [61.9, -37.1, 62.1, -37.1, 62.1, -36.9]
    assert first["x_point"] == [62.5, -37.25] and first["target_name"] == "M 31 Ω"
    assert first["em_xel"] == 7 and first["pol_xel"] is None
    assert second["em_xel"] is None and second["pol_xel"] == 3 and second["x_flag"] is False
    assert second["s_region"] == [] and second["x_point"] == [None, None]  # masked elements
    field = table.schema.field("s_region")
    assert field.metadata[b"xtype"] == b"polygon" and field.metadata[b"unit"] == b"deg"

    # through a merge and back with astropy: the arrays and their attributes survive
    table = with_harvest_columns(table, _harvest_values())
    MetadataStore(str(tmp_path)).append(table)
    (path,) = parquet_files(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "No table::len::" guessing
        back = Table.read(path)
    assert list(back["s_region"][0]) == [61.9, -37.1, 62.1, -37.1, 62.1, -36.9]
    assert back["s_region"].meta["xtype"] == "polygon" and back["s_region"].unit == u.deg
    assert back["x_point"].shape == (2, 2) and back["x_point"].unit == u.deg
    assert back["s_ra"].meta["ucd"] == "pos.eq.ra"


# ------------------------------------------------------------------ migration (unit level)


def _format_1_store(root: Path) -> MetadataStore:
    """Two partitions written by the old writer (format 1)."""
    store = MetadataStore(str(root))
    new = with_harvest_columns(
        _obscore(lsst_band=["i", "r"], obs_publisher_did=["ivo://x/a", "ivo://x/b"]),
        _harvest_values(("seed", "other")),
    )
    store.append(new)
    rewrite_as_format_1(root)
    return store


def test_format_1_rows_read_as_migrated_with_obscore_target_name_unknown(tmp_path):
    store = _format_1_store(tmp_path)
    files = parquet_files(tmp_path)
    assert [file_format(pq.read_schema(p)) for p in files] == [1, 1]
    old = pq.read_table(files[0])
    assert "target_name" in old.column_names and "verdict" in old.column_names

    table = store.read()  # nothing written, rows in the current naming
    assert [file_format(pq.read_schema(p)) for p in files] == [1, 1]
    assert set(HARVEST_COLUMNS) <= set(table.column_names)
    assert not {"verdict", "stored", "run_id"} & set(table.column_names)
    rows = sorted(table.to_pylist(), key=lambda r: r["obs_publisher_did"])
    assert [r["obsh_target_name"] for r in rows] == ["seed", "other"]
    assert [r["target_name"] for r in rows] == [None, None]  # lost by format 1
    assert [r["obsh_verdict"] for r in rows] == ["contains", "outside"]
    assert set(priors_from(table)) == {("seed", "ivo://x/a"), ("other", "ivo://x/b")}
    description = table.schema.field("obsh_verdict").metadata[b"description"]
    assert description.startswith(b"Does the image's WCS")


def test_an_append_migrates_every_old_file_first_so_the_dataset_is_never_mixed(tmp_path):
    store = _format_1_store(tmp_path)
    # the next run re-queries ("seed", a) only: band i gets a file, band r does not
    again = with_harvest_columns(
        _obscore().take([0]), {"obsh_target_name": ["seed"], "obsh_verdict": ["contains"]}
    )
    store.append(again)
    files = parquet_files(tmp_path)
    assert [file_format(pq.read_schema(p)) for p in files] == [FORMAT] * 3  # 2 migrated, 1 new
    assert not [p for p in files if p.name == "obscore.parquet"]
    rows = {r["obs_publisher_did"]: r for r in read_rows(tmp_path)}
    assert rows["ivo://x/a"]["target_name"] == ARCHIVE_TARGET  # the query supplied it again
    assert rows["ivo://x/b"]["target_name"] is None  # not re-queried: unknown, not invented
    assert rows["ivo://x/b"]["obsh_target_name"] == "other"
    assert store.migrate() == []  # nothing left to do


def test_files_that_are_not_ours_or_newer_are_refused_in_one_line(tmp_path):
    store = MetadataStore(str(tmp_path))
    store.append(with_harvest_columns(_obscore(), _harvest_values()))
    (path,) = parquet_files(tmp_path)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({FORMAT_KEY: b"3"}), path)
    # a run reads the dataset (its priors) before it writes anything
    with pytest.raises(MetadataFormatError, match="newer obsharvest") as error:
        store.read()
    one_line(str(error.value))
    with pytest.raises(MetadataFormatError, match="newer obsharvest"):
        store.compact()
    pq.write_table(pa.table({"ra": [1.0], "dec": [2.0]}), path)
    with pytest.raises(MetadataFormatError, match="not obsharvest's Parquet"):
        store.read()
    with pytest.raises(MetadataFormatError):
        migrated(pa.table({"obsh_verdict": ["x"]}))  # prefixed but unmarked: not ours


# ------------------------------------------------------------------ harvests


def _params(tap_url: str, output, **extra) -> HarvestParams:
    """The harvest flow tests' parameters, for any TAP URL (the crafted server's too)."""
    from types import SimpleNamespace

    from tests.e2e.test_harvest_flow import params_for

    return params_for(SimpleNamespace(tap_url=tap_url), output, **extra)


@pytest.fixture(scope="module")
def harvested(archive, prefect_harness, tmp_path_factory):
    output = tmp_path_factory.mktemp("schema-harvest")
    summary = harvest_params(_params(archive.tap_url, output))
    assert summary.ok, summary.failures
    return output, summary


def test_table_read_gives_units_descriptions_and_ucds(harvested):
    output, _ = harvested
    path = parquet_files(output)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = Table.read(path)
    assert table["s_ra"].unit == u.deg and table["t_min"].unit == u.d
    assert table["s_ra"].meta["ucd"] == "pos.eq.ra"
    assert table["t_min"].meta["ucd"] == "time.start;obs.exposure"
    assert table["s_ra"].description and table["t_min"].description == "Start time in MJD"
    assert table["obsh_verdict"].description.startswith("Does the image's WCS")
    assert table["obsh_target_ra"].unit == u.deg and table["obsh_file_size"].unit == u.byte
    assert table["s_region"].meta["ucd"] == "pos.outline;obs.field"
    assert table.colnames == pq.read_schema(path).names
    # the Arrow field metadata stays for the tools that read it
    field = pq.read_schema(path).field("t_min")
    assert field.metadata[b"unit"] == b"d" and field.metadata[b"ucd"] == b"time.start;obs.exposure"


def test_an_old_output_is_migrated_by_the_next_run_which_fetches_nothing(
    archive, harvested, tmp_path
):
    output, first = harvested
    import shutil

    shutil.copytree(output / "metadata", tmp_path / "metadata")
    shutil.copytree(output / "fits", tmp_path / "fits")
    rewrite_as_format_1(tmp_path)
    # a pair of the old output that this run will not query again
    (path,) = [p for p in parquet_files(tmp_path) if "/i/" in p.as_posix()][:1]
    old = pq.read_table(path)
    gone = old.slice(0, 1).set_column(
        old.column_names.index("target_name"), "target_name", pa.array(["gone"])
    )
    pq.write_table(pa.concat_tables([old, gone]), path)

    archive.reset_stats()
    again = harvest_params(_params(archive.tap_url, tmp_path))
    stats = archive.stats()
    assert again.ok and again.downloaded == 0 and again.reused == first.images
    assert "files" not in stats and "datalink" not in stats  # decisions survived the rename
    assert {file_format(pq.read_schema(p)) for p in parquet_files(tmp_path)} == {FORMAT}
    rows = read_rows(tmp_path)
    assert len(rows) == first.images + 1
    assert not {"verdict", "stored", "storage_uri"} & set(rows[0])
    kept = [r for r in rows if r["obsh_target_name"] == "gone"]
    assert len(kept) == 1 and kept[0]["target_name"] is None and kept[0]["obsh_verdict"]
    fresh = [r for r in rows if r["obsh_target_name"] == "seed"]
    assert len(fresh) == first.images
    assert all(r["target_name"] is not None for r in fresh)  # the query supplied it


def test_obsharvest_migrate_rewrites_old_files_or_says_why_not(harvested, tmp_path, capfd):
    output, _ = harvested
    import shutil

    shutil.copytree(output / "metadata", tmp_path / "metadata")
    rewrite_as_format_1(tmp_path)
    raw = ds.dataset(str(tmp_path / "metadata"), format="parquet").to_table()  # old names
    before = {r["obs_publisher_did"]: r for r in raw.to_pylist()}
    assert main(["migrate", str(tmp_path)]) == 0
    assert "metadata files migrated" in one_line(capfd.readouterr().out)
    after = {r["obs_publisher_did"]: r for r in read_rows(tmp_path)}
    assert after.keys() == before.keys()
    for did, row in after.items():
        assert row["obsh_target_name"] == before[did]["target_name"]
        assert row["obsh_sha256"] == before[did]["sha256"] and row["target_name"] is None
    assert main(["migrate", str(tmp_path)]) == 0
    assert one_line(capfd.readouterr().out) == "nothing to migrate"

    pq.write_table(pa.table({"ra": [1.0]}), parquet_files(tmp_path)[0])
    assert main(["migrate", str(tmp_path)]) == 2
    assert "not obsharvest's Parquet" in one_line(capfd.readouterr().err)


# ----------------------------------------------- an archive with target_name and extras


def _crafted_tap(server: CraftedServer, archive, change) -> None:
    """A TAP answering the embedded archive's own rows for the seed, changed by ``change``
    (Datalink and files still come from the archive)."""
    service = pyvo.dal.TAPService(archive.tap_url)
    rows = service.run_sync(
        "SELECT * FROM ivoa.ObsCore WHERE CONTAINS(POINT('ICRS', "
        f"{TARGET_RA}, {TARGET_DEC}), s_region) = 1 AND lsst_band = 'i' AND calib_level = 2"
    ).to_table()
    change(rows)
    votable = from_table(rows)
    votable.resources[0].infos.append(Info(name="QUERY_STATUS", value="OK"))
    body = io.BytesIO()
    votable.to_xml(body)
    capabilities = requests.get(archive.tap_url + "/capabilities", timeout=30)
    xml = {"Content-Type": "text/xml"}
    server.route("/tap/capabilities", Reply(body=capabilities.content, headers=xml))
    server.route("/tap/sync", Reply(body=body.getvalue(), headers=xml))


def _crafted_params(server: CraftedServer, output, **extra) -> HarvestParams:
    return _params(
        server.url("/tap"), output, query={"mode": "sync", "strategy": "batched"}, **extra
    )


@pytest.mark.usefixtures("prefect_harness")
def test_an_archive_target_name_and_extra_columns_are_kept(archive, tmp_path):
    def change(rows: Table) -> None:
        rows["target_name"] = [ARCHIVE_TARGET] * len(rows)
        rows["x_seeing"] = np.linspace(0.6, 0.9, len(rows)).astype(np.float32)
        rows["x_seeing"].unit = "arcsec"
        rows["x_seeing"].meta["ucd"] = "instr.obsty.seeing"

    with CraftedServer() as server:
        _crafted_tap(server, archive, change)
        summary = harvest_params(_crafted_params(server, tmp_path, plan=True))
    assert summary.ok, summary.failures
    rows = read_rows(tmp_path)
    assert rows and all(r["target_name"] == ARCHIVE_TARGET for r in rows)
    assert all(r["obsh_target_name"] == "seed" for r in rows)
    assert all(r["obsh_verdict"] in ("contains", "outside") for r in rows)
    schema = pq.read_schema(parquet_files(tmp_path)[0])
    assert schema.field("x_seeing").type == pa.float32()
    assert all(0.59 < r["x_seeing"] < 0.91 for r in rows)
    table = Table.read(parquet_files(tmp_path)[0])
    assert table["x_seeing"].unit == u.arcsec
    assert table["x_seeing"].meta["ucd"] == "instr.obsty.seeing"


@pytest.mark.usefixtures("prefect_harness")
def test_an_archive_column_in_the_harvest_namespace_stops_the_run_before_any_image(
    archive, tmp_path
):
    def change(rows: Table) -> None:
        rows["obsh_verdict"] = ["the archive's own"] * len(rows)

    with CraftedServer() as server:
        _crafted_tap(server, archive, change)
        archive.reset_stats()
        with pytest.raises(MetadataFormatError, match="'obsh_verdict'"):
            harvest_params(_crafted_params(server, tmp_path))
    stats = archive.stats()
    assert "datalink" not in stats and "files" not in stats
    assert not parquet_files(tmp_path)


# ------------------------------------------------ every TAP_SCHEMA column, every archive


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("naming", ["dp02", "dp1"])
@pytest.mark.parametrize("profile", ["generic", "rubin"])
@pytest.mark.timeout(240)
def test_every_tap_schema_obscore_column_is_in_the_parquet_with_its_value(
    profile, naming, tmp_path
):
    settings = ArchiveSettings(seed=5, n_visits=24, profile=profile, naming=naming)
    with EmbeddedArchive(settings) as archive:
        summary = harvest_params(_params(archive.tap_url, tmp_path, plan=True))
        assert summary.ok, summary.failures
        assert assert_every_obscore_column_kept(archive.tap_url, tmp_path) >= 30


def test_the_readme_readings_work(harvested, tmp_path, monkeypatch):
    """The three readings of README's "Reading the results" and docs/reading.md, as written there, over an
    output where a later run found one of the first run's hits outside: each reading gives
    the current view (that pair's newest row), not every row."""
    import shutil
    from datetime import timedelta

    import duckdb
    import pyarrow.compute as pc
    from astropy.table import unique, vstack

    output, summary = harvested
    shutil.copytree(output / "metadata", tmp_path / "out" / "metadata")
    store = MetadataStore(str(tmp_path / "out"))
    first = store.read()
    hit = first.filter(pc.field("obsh_verdict") == "contains").slice(0, 1)
    later = hit.column("obsh_harvested_at")[0].as_py() + timedelta(seconds=1)
    for name, value in (("obsh_verdict", "outside"), ("obsh_run_id", "later-run")):
        hit = hit.set_column(hit.column_names.index(name), name, pa.array([value]))
    hit = hit.set_column(
        hit.column_names.index("obsh_harvested_at"),
        hit.schema.field("obsh_harvested_at"),
        pa.array([later], hit.schema.field("obsh_harvested_at").type),
    )
    store.append(hit, run_id="later-run")
    assert len(parquet_files(tmp_path / "out")) == len(parquet_files(output)) + 1
    expected = summary.stored_images - 1
    monkeypatch.chdir(tmp_path)

    rows = MetadataStore("out").read()
    hits = rows.filter(pc.field("obsh_verdict") == "contains")
    assert hits.num_rows == expected > 0 and rows.num_rows == first.num_rows
    assert rows.schema.field("s_ra").metadata[b"unit"] == b"deg"
    assert all(r["obsh_storage_uri"] for r in hits.to_pylist())
    raw = ds.dataset("out/metadata", format="parquet").to_table()
    assert raw.num_rows == first.num_rows + 1
    assert current(raw).num_rows == rows.num_rows

    tables = [Table.read(p) for p in sorted(Path("out/metadata").glob("*/*/*.parquet"))]
    rows = vstack(tables)
    rows.sort(["obsh_harvested_at", "obsh_run_id"])
    rows = unique(rows, keys=["obsh_target_name", "obs_publisher_did"], keep="last")
    assert rows["s_ra"].unit == u.deg and rows["t_min"].unit == u.d
    assert len(rows[rows["obsh_verdict"] == "contains"]) == expected

    found = duckdb.sql(
        """
        WITH obscore AS (
            SELECT * FROM read_parquet('out/metadata/*/*/*.parquet', union_by_name = true)
            QUALIFY row_number() OVER (PARTITION BY obsh_target_name, obs_publisher_did
                ORDER BY obsh_harvested_at DESC NULLS LAST, obsh_run_id DESC NULLS LAST) = 1
        )
        SELECT obsh_target_name, obs_id, target_name, obsh_storage_uri
        FROM obscore
        WHERE obsh_verdict = 'contains'
        ORDER BY obsh_target_name, obs_id
        """
    ).fetchall()
    assert len(found) == expected and all(name == "seed" for name, *_ in found)


def test_the_yaml_header_is_made_once_per_schema_and_per_unit(monkeypatch):
    """file_metadata keeps astropy's header per schema; two schemas that differ only in a
    field's unit (equal as pa.Schema) must still get their own header."""
    from astropy.table import meta as table_meta

    from obsharvest import metadata

    calls = []
    real = table_meta.get_yaml_from_table
    monkeypatch.setattr(table_meta, "get_yaml_from_table", lambda t: calls.append(1) or real(t))
    monkeypatch.setattr(metadata, "_YAML_BY_SCHEMA", {})

    def table(unit: str) -> pa.Table:
        field = pa.field("s_ra", pa.float64(), metadata={b"unit": unit.encode()})
        return pa.table({"s_ra": [1.0]}, schema=pa.schema([field]))

    deg = metadata.file_metadata(table("deg"))
    again = metadata.file_metadata(table("deg"))
    rad = metadata.file_metadata(table("rad"))
    assert len(calls) == 2
    assert deg == again
    assert b"unit: deg" in deg[b"table_meta_yaml"]
    assert b"unit: rad" in rad[b"table_meta_yaml"]
