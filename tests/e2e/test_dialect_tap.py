"""TAP services that read the standards their own way still harvest exactly.

Each case is a dialect of a real server, switched on in the embedded archive: untyped
VOSI capabilities with no ``language`` (pyvo's typed reading raises on them), a
case-sensitive ``ivoa.obscore``, upper-case result columns, no ``TAP_UPLOAD``, an upload
join that breaks with a 500, a limit on OR-ed conditions, INTERSECTS refused though no
capability said so. The harvest must store exactly the images whose pixels contain a
target (the archive's WCS truth), say in one line what it fell back to, and never print
a traceback.
"""

from __future__ import annotations

import logging

import pyarrow.dataset as ds
import pytest

from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.models import Target
from obsharvest.query.adql import Constraints
from obsharvest.query.capabilities import (
    adql_table_name,
    obscore_in_tables,
    parse_tap_capability,
    probe_features,
)
from obsharvest.query.obscore import QueryOptions, Strategy, query_targets
from obsharvest.query.service import TapService
from obsharvest.query.shapes import Shape, ShapeMemory, simpler
from obsharvest.simarchive.dialect import Dialect
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from tests.shared_files import shared

pytestmark = pytest.mark.usefixtures("prefect_harness")

# the seed's position, a neighbour sharing some of its images, one further out, and a
# radius target (it needs INTERSECTS or the centre-distance pre-filter)
TARGETS = (
    ("seed", 62.0, -37.0, None),
    ("near", 62.05, -36.97, None),
    ("east", 62.4, -37.1, None),
    ("disc", 61.8, -36.9, 0.05),
)

UNTYPED = b"""<?xml version="1.0"?>
<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"
    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <capability standardID="ivo://ivoa.net/std/TAP">
    <interface xsi:type="vs:ParamHTTP" role="std" version="1.1">
      <accessURL use="base">http://example.org/tap</accessURL>
    </interface>
    <uploadMethod ivo-id="ivo://ivoa.net/std/TAPRegExt#upload-inline"/>
    <outputLimit><default unit="row">2000</default><hard unit="row">5000</hard></outputLimit>
  </capability>
  <capability standardID="ivo://ivoa.net/std/VOSI#tables">
    <interface xsi:type="vs:ParamHTTP"><accessURL>http://example.org/tap/tables</accessURL>
    </interface>
  </capability>
</vosi:capabilities>"""


def test_an_untyped_capability_is_read_with_what_it_says_and_defaults_for_the_rest():
    capability = parse_tap_capability(UNTYPED)
    assert capability is not None
    assert not capability.typed and capability.languages == ()
    assert capability.geometry is None  # not declared: INTERSECTS is tried, not assumed absent
    assert capability.upload_methods == ("ivo://ivoa.net/std/tapregext#upload-inline",)
    assert (capability.maxrec_default, capability.maxrec_hard) == (2000, 5000)
    said = " ".join(capability.assumptions())
    assert "ADQL 2.0 assumed" in said and "upload" not in said


def test_a_document_without_a_tap_capability_is_none_and_byte_limits_are_not_rows():
    vosi_only = UNTYPED.replace(b'standardID="ivo://ivoa.net/std/TAP"', b'standardID="x"')
    assert parse_tap_capability(vosi_only) is None
    in_bytes = UNTYPED.replace(b'<hard unit="row">5000', b'<hard unit="byte">5000')
    capability = parse_tap_capability(in_bytes)
    assert capability is not None and capability.maxrec_hard is None


def test_the_obscore_table_is_found_in_any_case_and_names_stay_adql():
    tables = b"""<tableset><schema><name>ivoa</name>
      <table><name>ivoa.obscore</name></table></schema></tableset>"""
    assert obscore_in_tables(tables) == "ivoa.obscore"
    by_utype = b"""<tableset><schema><name>x</name><table><name>dc.obs</name>
      <utype>ivo://ivoa.net/std/ObsCore#table-1.1</utype></table></schema></tableset>"""
    assert obscore_in_tables(by_utype) == "dc.obs"
    assert adql_table_name("ivoa.ObsCore") == "ivoa.ObsCore"
    assert adql_table_name("ivoa.Obs Core") == 'ivoa."Obs Core"'
    assert adql_table_name('ivoa.x" OR 1=1 --') is None  # a server's name cannot carry ADQL


def test_the_shape_ladder_ends_at_one_target_without_intersects():
    point, disc = Target("p", 1.0, 2.0), Target("d", 1.0, 2.0, 0.1)
    shape = Shape(upload=True, size=50, intersects=True)
    steps = []
    while shape is not None:
        steps.append(shape.describe())
        shape = simpler(shape, [point, disc] * 25)
    assert steps == [
        "upload joins",
        "OR-batches of 50",
        "OR-batches of 12",
        "OR-batches of 3",
        "one target per query",
        "one target per query without INTERSECTS",
    ]
    assert simpler(Shape(False, 1, True), [point]) is None  # INTERSECTS is not the problem
    named = simpler(Shape(False, 50, True), [point, disc], "INTERSECTS is not supported")
    assert named == Shape(False, 50, False)  # the feature named goes first, the batch stays


def _archive(dialect: list[str], profile: str = "generic") -> ArchiveSettings:
    return shared(
        ArchiveSettings(
            seed=7, n_visits=12, binning=10, profile=profile, dialect=Dialect.parse(dialect)
        )
    )


def _params(archive: EmbeddedArchive, output, targets_csv, **query) -> HarvestParams:
    return HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url},
            "targets": str(targets_csv),
            "output_url": str(output),
            "query": query,
            "retry": {"read_timeout": 20.0, "initial_wait": 0.05},
        }
    )


@pytest.fixture(scope="module")
def targets_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("targets") / "targets.csv"
    path.write_text(
        "name,ra,dec,radius\n" + "".join(f"{n},{r},{d},{x or ''}\n" for n, r, d, x in TARGETS)
    )
    return path


def _truth(archive: EmbeddedArchive) -> dict[str, frozenset[str]]:
    """Images whose pixels contain each point target (the radius target is checked apart)."""
    return {name: archive.truth(ra, dec) for name, ra, dec, radius in TARGETS if not radius}


# The other TAP switches harvest in tests/e2e/test_conformance.py (the dialect servers);
# here what needs a radius target: INTERSECTS refused although nothing said so (the
# RSP's engine behind untyped capabilities), and a small OR limit.
CASES = {
    "intersects-refused": (["capabilities=untyped", "upload=off"], "rubin", {}),
    "or-limit": (["or_limit=2"], "generic", {"strategy": "batched"}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.timeout(240)
def test_each_tap_dialect_harvests_exactly_the_truth(case, targets_csv, tmp_path, caplog):
    dialect, profile, query = CASES[case]
    caplog.set_level(logging.WARNING)
    with EmbeddedArchive(_archive(dialect, profile)) as archive:
        truth = _truth(archive)
        summary = harvest_params(_params(archive, tmp_path, targets_csv, **query))
        assert summary.ok, summary.failures
        rows = ds.dataset(str(tmp_path / "metadata"), format="parquet").to_table().to_pylist()
        by_target: dict[str, set[str]] = {}
        for row in rows:
            name, did = row["obsh_target_name"], row["obs_publisher_did"]
            if name in truth:
                assert row["obsh_verdict"] == ("contains" if did in truth[name] else "outside")
            if row["obsh_stored"]:
                by_target.setdefault(name, set()).add(did)
        for name, dids in truth.items():
            assert by_target.get(name, set()) == set(dids), name
        assert by_target.get("disc"), "the radius target overlaps images"
    said = [r.getMessage() for r in caplog.records if "from now on" in r.getMessage()]
    assert len(said) == 1, said  # the fall-back is said once, not per batch
    assert not any(r.exc_info for r in caplog.records)


def test_a_fallback_is_learnt_once_per_run(tmp_path):
    """Two batches against a service whose upload join breaks: the first pays for the
    broken shape, the second starts with OR-batches (one query each, no failed one)."""
    with EmbeddedArchive(_archive(["upload_join=broken"])) as archive:
        session = __import__("requests").Session()
        service = TapService(archive.tap_url, session=session)
        options = QueryOptions(mode="sync", shapes=ShapeMemory())
        features = probe_features(service, options.retry)
        assert features.upload and features.intersects
        targets = [Target(n, ra, dec, r) for n, ra, dec, r in TARGETS if not r]
        constraints = Constraints()
        strategy = Strategy(kind="upload", batch_size=50)
        first: list[str] = []
        rows = query_targets(
            service, targets, constraints, strategy, features, options, first.append
        )
        second: list[str] = []
        again = query_targets(
            service, targets, constraints, strategy, features, options, second.append
        )
        assert "TAP_UPLOAD" in first[0] and "TAP_UPLOAD" not in first[-1]
        assert len(second) == 1 and "TAP_UPLOAD" not in second[0]
        assert sorted(rows["obs_publisher_did"]) == sorted(again["obs_publisher_did"])
        truth = set().union(*(archive.truth(ra, dec) for _, ra, dec, _ in TARGETS[:3]))
        assert truth <= set(rows["obs_publisher_did"])


def test_a_wrong_extra_where_is_not_blamed_on_the_shape(targets_csv, tmp_path):
    """The simplest shape fails too: the service's own words end the run, after a bounded
    walk down the ladder, and the next batch does not walk it again."""
    from obsharvest.errors import QueryError

    with EmbeddedArchive(_archive([])) as archive:
        service = TapService(archive.tap_url)
        options = QueryOptions(mode="sync", shapes=ShapeMemory())
        features = probe_features(service, options.retry)
        targets = [Target(n, ra, dec, r) for n, ra, dec, r in TARGETS]
        bad = Constraints(extra_where="no_such_column > 1")
        asked: list[str] = []
        with pytest.raises(QueryError, match="no_such_column"):
            query_targets(
                service, targets, bad, Strategy(kind="batched"), features, options, asked.append
            )
        assert 1 < len(asked) <= 5
        asked.clear()
        with pytest.raises(QueryError, match="no_such_column"):
            query_targets(
                service, targets, bad, Strategy(kind="batched"), features, options, asked.append
            )
        assert len(asked) == 1
