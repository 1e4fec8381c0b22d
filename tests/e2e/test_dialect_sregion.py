"""Every ``s_region`` dialect an archive serves harvests exactly the WCS truth.

The embedded archive keeps one region per product and evaluates ADQL against it; its
``s_region_dialect`` switch only changes how the column is written in replies: Rubin's
``POLYGON ICRS``, ESO's ``POLYGON J2000``, ALMA's ``Union ICRS (Polygon ... Polygon ...)``,
DALI ``xtype="polygon"`` double arrays, or NULL on a third of the rows. The harvest uses
OR-batches, so the client's own reading of ``s_region`` decides which rows serve which
target: a misread region would lose a pair (fewer stored images than the truth) or keep
rows it should have dropped (more pairs than the archive's own CONTAINS).
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest
from pyvo.dal import TAPService

from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.simarchive.dialect import Dialect
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from obsharvest.verify.sregion import pack_rows, point_in_regions
from tests.shared_files import shared

DIALECTS = ("stcs", "stcs-j2000", "union", "dali", "null")
# the seed's position, a neighbour sharing some of its images, and one further out
TARGETS = (("seed", 62.0, -37.0), ("near", 62.05, -36.97), ("east", 62.4, -37.1))
WHERE = "lsst_band = 'i' AND calib_level = 2"


def _settings(dialect: str) -> ArchiveSettings:
    return shared(
        ArchiveSettings(
            seed=7,
            n_visits=12,
            binning=10,
            dialect=Dialect.parse([f"s_region_dialect={dialect}"]),
        )
    )


def _rows(archive: EmbeddedArchive, binary: bool):
    service = TAPService(archive.tap_url)
    query = "SELECT obs_publisher_did, s_region, s_ra, s_dec, s_fov FROM ivoa.ObsCore"
    kwargs = {"responseformat": "votable/b2"} if binary else {}
    return service.run_sync(query, maxrec=100_000, **kwargs).to_table()


@pytest.fixture(scope="module")
def stcs_rows():
    with EmbeddedArchive(_settings("stcs")) as archive:
        return _rows(archive, binary=False)


@pytest.mark.parametrize("binary", [False, True], ids=["tabledata", "binary2"])
@pytest.mark.parametrize("dialect", DIALECTS[1:])
def test_every_dialect_is_the_same_sky_to_the_client(dialect, binary, stcs_rows):
    """Row by row, the served value reads as the stored polygon (NULL rows as their
    s_fov circle, which holds the polygon)."""
    with EmbeddedArchive(_settings(dialect)) as archive:
        rows = _rows(archive, binary)
    assert list(rows["obs_publisher_did"]) == list(stcs_rows["obs_publisher_did"])
    column = rows["s_region"]
    if dialect == "dali":
        assert column.meta["xtype"] == "polygon" and isinstance(column[0], np.ndarray)
    elif dialect == "stcs-j2000":
        assert {str(v).split()[:2][1] for v in column} == {"J2000"}
        assert {str(v).split()[0] for v in column} == {"POLYGON", "Polygon"}
    elif dialect == "union":
        assert all(str(v).startswith("Union ICRS (") for v in column)
    # a NULL char reaches astropy as masked or as "" (VOTable TABLEDATA's empty TD)
    null = np.ma.getmaskarray(column) | np.array([str(v).strip() in ("", "--") for v in column])
    assert (0.2 < null.mean() < 0.45) if dialect == "null" else not null.any()

    ours, theirs = pack_rows(rows), pack_rows(stcs_rows)
    assert not ours.unknown.any() and not theirs.unknown.any()
    rng = np.random.default_rng(5)
    for ra, dec in zip(rng.uniform(61.4, 62.6, 60), rng.uniform(-37.5, -36.5, 60), strict=True):
        hit, unknown = point_in_regions(ra, dec, ours)
        truth, _ = point_in_regions(ra, dec, theirs)
        assert not unknown.any()
        assert (hit == truth)[~null].all()
        assert (hit >= truth)[null].all()  # the s_fov circle contains the footprint


def test_tap_schema_describes_the_dali_column():
    with EmbeddedArchive(_settings("dali")) as archive:
        service = TAPService(archive.tap_url)
        (row,) = service.run_sync(
            "SELECT datatype, arraysize, xtype FROM TAP_SCHEMA.columns "
            "WHERE column_name = 's_region'"
        ).to_table()
        # and the ADQL engine still reads the stored region
        found = service.run_sync(
            "SELECT obs_publisher_did FROM ivoa.ObsCore "
            "WHERE CONTAINS(POINT('ICRS', 62.0, -37.0), s_region) = 1"
        ).to_table()
    assert (str(row["datatype"]), str(row["arraysize"]), str(row["xtype"])) == (
        "double",
        "*",
        "polygon",
    )
    assert len(found) > 0


def _params(archive: EmbeddedArchive, output, targets_csv) -> HarvestParams:
    return HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url},
            "targets": str(targets_csv),
            "constraints": {"bands": ["i"], "calib_levels": [2]},
            "output_url": str(output),
            # OR-batches: the client's reading of s_region ties rows to targets
            "query": {"strategy": "batched", "mode": "sync"},
            "products": {"quicklook": True},  # draws each stored image's s_region
            "retry": {"read_timeout": 20.0},
        }
    )


@pytest.fixture(scope="module")
def targets_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("targets") / "targets.csv"
    path.write_text("name,ra,dec\n" + "".join(f"{n},{r},{d}\n" for n, r, d in TARGETS))
    return path


def _contains(archive: EmbeddedArchive) -> set[tuple[str, str]]:
    """(target, image) pairs the archive's own CONTAINS finds against the stored region."""
    service = TAPService(archive.tap_url)
    pairs = set()
    for name, ra, dec in TARGETS:
        rows = service.run_sync(
            f"SELECT obs_publisher_did FROM ivoa.ObsCore WHERE {WHERE} AND "
            f"CONTAINS(POINT('ICRS', {ra}, {dec}), s_region) = 1"
        ).to_table()
        pairs |= {(name, str(did)) for did in rows["obs_publisher_did"]}
    return pairs


@pytest.mark.usefixtures("prefect_harness")
# plain STC-S harvests everywhere else, J2000 polygons in tests/e2e/test_conformance.py too
@pytest.mark.parametrize("dialect", ["union", "dali", "null"])
@pytest.mark.timeout(240)
def test_every_s_region_dialect_harvests_exactly_the_truth(dialect, targets_csv, tmp_path):
    with EmbeddedArchive(_settings(dialect)) as archive:
        truth = {name: archive.truth(ra, dec) for name, ra, dec in TARGETS}
        contains = _contains(archive)
        summary = harvest_params(_params(archive, tmp_path, targets_csv))
    assert summary.ok, summary.failures

    rows = ds.dataset(str(tmp_path / "metadata"), format="parquet").to_table().to_pylist()
    pairs = {(r["obsh_target_name"], r["obs_publisher_did"]) for r in rows}
    if dialect == "null":  # a NULL row's s_fov circle is wider than its polygon
        assert pairs >= contains
    else:  # read as the archive reads its stored polygon: not one pair more or less
        assert pairs == contains
    for row in rows:
        did, name = row["obs_publisher_did"], row["obsh_target_name"]
        assert row["obsh_verdict"] == ("contains" if did in truth[name] else "outside"), row
        assert row["obsh_failure"] is None
    stored = {r["obs_publisher_did"] for r in rows if r["obsh_stored"]}
    assert stored == set().union(*truth.values()) & {did for _, did in pairs}
    assert stored, "the workload must store something to prove anything"
    assert len(list((tmp_path / "fits").rglob("*.fits"))) == len(stored)

    # the Parquet rows keep s_region as served: text, a DALI array, or NULL
    served = [r["s_region"] for r in rows]
    if dialect == "dali":
        assert all(isinstance(v, list) and len(v) >= 6 for v in served)
    elif dialect == "null":
        # a NULL char comes out of VOTable TABLEDATA as "" (no null value for char)
        assert any(v in (None, "") for v in served) and any(v for v in served)
    else:
        assert all(isinstance(v, str) for v in served)
