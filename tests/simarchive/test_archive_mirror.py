"""An archive as a mirror of another (``ArchiveSettings.publisher``): the same images,
obs_ids and bytes under its own ``obs_publisher_did``, the original's in
``obs_creator_did`` -- what issue 24's one-object-per-image across services is tested on.

Both archives are queried over real HTTP with pyvo, and files are reached by following
each archive's own Datalink ``#this`` row.
"""

from __future__ import annotations

import argparse

import pytest
import pyvo
import requests
from pyvo.dal.adhoc import DatalinkResults

from obsharvest.simarchive.cli import _settings as cli_settings
from obsharvest.simarchive.cli import add_parser
from obsharvest.simarchive.obscore import COLUMN_NAMES
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from obsharvest.simarchive.sky.naming import with_authority
from tests.conftest import TARGET_DEC, TARGET_RA

MIRROR = "mirror.example"
ORIGINAL = "org.rubinobs"  # DP0.2's authority
SKY = dict(seed=7, n_visits=12)
IDS_QUERY = "SELECT obs_id, obs_publisher_did, obs_creator_did FROM ivoa.ObsCore"


@pytest.fixture(scope="module")
def original():
    # serving obs_creator_did too, as real archives often do: equal to its publisher DID
    with EmbeddedArchive(ArchiveSettings(**SKY, creator_did=True)) as archive:
        yield archive


@pytest.fixture(scope="module")
def mirror():
    with EmbeddedArchive(ArchiveSettings(**SKY, publisher=MIRROR)) as archive:
        yield archive


def _ids(archive: EmbeddedArchive) -> list[tuple[str, str, str]]:
    table = pyvo.dal.TAPService(archive.tap_url).run_sync(IDS_QUERY).to_table()
    return [
        (str(r["obs_id"]), str(r["obs_publisher_did"]), str(r["obs_creator_did"])) for r in table
    ]


def _file(archive: EmbeddedArchive, did: str) -> bytes:
    """The image's bytes, found by asking this archive's Datalink for ``did``."""
    links = DatalinkResults.from_result_url(
        f"{archive.datalink_url}?ID={requests.utils.quote(did, safe='')}"
    )
    (this,) = [r for r in links if r["semantics"] == "#this"]
    assert not this["error_message"], this["error_message"]
    reply = requests.get(this["access_url"], timeout=30)
    reply.raise_for_status()
    return reply.content


def test_mirror_serves_the_same_images_under_its_own_dids(original, mirror):
    theirs, mine = _ids(original), _ids(mirror)
    assert len(theirs) == len(mine) > 0
    assert {o for o, _, _ in theirs} == {o for o, _, _ in mine}
    assert not {d for _, d, _ in theirs} & {d for _, d, _ in mine}
    assert all(d.startswith(f"ivo://{MIRROR}/") for _, d, _ in mine)
    # one image, one creator DID: the original's publisher DID, on both archives
    assert all(d == c for _, d, c in theirs)
    assert sorted((o, c) for o, _, c in theirs) == sorted((o, c) for o, _, c in mine)
    assert {(with_authority(c, MIRROR), c) for _, _, c in theirs} == {(d, c) for _, d, c in mine}


def test_mirror_datalink_resolves_its_dids_to_the_same_bytes(original, mirror):
    creator_of = mirror.creator_dids()
    did = sorted(mirror.truth(TARGET_RA, TARGET_DEC))[0]
    assert creator_of[did] != did
    assert _file(mirror, did) == _file(original, creator_of[did])


def test_mirror_does_not_know_the_original_dids(original, mirror):
    did = sorted(original.truth(TARGET_RA, TARGET_DEC))[0]
    links = DatalinkResults.from_result_url(
        f"{mirror.datalink_url}?ID={requests.utils.quote(did, safe='')}"
    )
    assert all(r["error_message"] for r in links)
    cutout = requests.get(
        mirror.soda_url, params={"ID": did, "CIRCLE": f"{TARGET_RA} {TARGET_DEC} 0.01"}, timeout=30
    )
    assert cutout.status_code == 404


def test_mirror_soda_takes_its_own_dids(mirror):
    did = sorted(mirror.truth(TARGET_RA, TARGET_DEC))[0]
    cutout = requests.get(
        mirror.soda_url, params={"ID": did, "CIRCLE": f"{TARGET_RA} {TARGET_DEC} 0.01"}, timeout=30
    )
    assert cutout.status_code == 200 and cutout.content.startswith(b"SIMPLE  =")


def test_truth_is_the_original_truth_through_the_did_change(original, mirror):
    truth = original.truth(TARGET_RA, TARGET_DEC)
    assert truth
    assert mirror.truth(TARGET_RA, TARGET_DEC) == {with_authority(d, MIRROR) for d in truth}
    assert mirror.creator_truth(TARGET_RA, TARGET_DEC) == truth
    assert original.creator_truth(TARGET_RA, TARGET_DEC) == truth
    served = requests.get(
        f"{mirror.base_url}/_truth", params={"ra": TARGET_RA, "dec": TARGET_DEC}, timeout=30
    ).json()
    assert served["obs_creator_did"] == sorted(truth)
    assert set(served["obs_publisher_did"]) == mirror.truth(TARGET_RA, TARGET_DEC)


def test_obs_creator_did_is_described_as_obscore_1_1_says(mirror):
    row = (
        pyvo.dal.TAPService(mirror.tap_url)
        .run_sync(
            "SELECT datatype, ucd, utype, std FROM tap_schema.columns "
            "WHERE table_name = 'ivoa.ObsCore' AND column_name = 'obs_creator_did'"
        )
        .to_table()
    )
    assert len(row) == 1
    assert (row["datatype"][0], row["ucd"][0], row["utype"][0], row["std"][0]) == (
        "char",
        "meta.id",
        "obscore:DataID.CreatorDID",
        1,
    )


def test_the_default_archive_is_unchanged():
    """No publisher: DP0.2's 37 columns, the release's DIDs, no creator column."""
    with EmbeddedArchive(ArchiveSettings(**SKY)) as archive:
        table = archive.tables["ivoa.obscore"]
        assert tuple(table.colnames) == COLUMN_NAMES
        assert all(d.startswith(f"ivo://{ORIGINAL}/") for d in archive.truth(TARGET_RA, TARGET_DEC))


def test_a_mirror_may_hide_the_creator():
    """A mirror without obs_creator_did: only the bytes say it is the same image."""
    settings = ArchiveSettings(**SKY, publisher=MIRROR, creator_did=False)
    with EmbeddedArchive(settings) as archive:
        assert "obs_creator_did" not in archive.tables["ivoa.obscore"].colnames


def test_dp1_mirror_renames_its_ivo_datalink_ids():
    """DP1's Datalink IDs are ivo:// identifiers of the release: a mirror's are its own."""
    settings = ArchiveSettings(**SKY, naming="dp1", publisher=MIRROR)
    with EmbeddedArchive(settings) as archive:
        product = archive.sky.products[0]
        assert product.id.startswith(f"ivo://{MIRROR}/lsst-dp1?")
        assert product.obs_creator_did.startswith("ivo://org.rubinobs/lsst-dp1?")
        assert archive.sky.product(product.id) == product


def test_with_authority_keeps_the_rest_of_the_did():
    did = "ivo://org.rubinobs/usdac/dp02?repo=dp02&id=abc"
    assert with_authority(did, MIRROR) == "ivo://mirror.example/usdac/dp02?repo=dp02&id=abc"
    assert with_authority("ivo://org.rubinobs?x", MIRROR) == "ivo://mirror.example?x"
    assert with_authority("butler://dp02/abc", MIRROR) == "butler://dp02/abc"


@pytest.mark.parametrize("bad", ["", "ab", "-mirror", "mirror/example", "ivo://mirror.example"])
def test_a_publisher_must_be_an_authority(bad):
    with pytest.raises(ValueError, match="IVOA authority"):
        ArchiveSettings(publisher=bad)


def test_cli_takes_the_publisher():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    mirror = cli_settings(parser.parse_args(["archive", "--publisher", MIRROR]))
    assert (mirror.publisher, mirror.creator_did) == (MIRROR, True)
    plain = cli_settings(parser.parse_args(["archive", "--creator-did"]))
    assert (plain.publisher, plain.creator_did) == (None, True)
    assert cli_settings(parser.parse_args(["archive"])).creator_did is False
