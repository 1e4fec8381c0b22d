"""The embedded archive speaks the access conventions of real ObsTAP services.

Each ``access_style`` is checked the way a client meets it: a TAP query of ivoa.ObsCore,
then the standard way from a row to the file's bytes, as the RSP, GAVO DaCHS, MAST and IRSA lay it out.
The hanging faults (``head_stall``, ``stall``, ``stall_body``) are checked on the raw
socket, with bounded client timeouts, and so is that ``stop()`` lets held connections go.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from urllib.parse import quote, urlsplit

import pytest
import pyvo
import requests
from pyvo.dal.adhoc import DatalinkResults

from obsharvest.simarchive.faults import FaultPlan, draw
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive

DATALINK_FORMAT = "application/x-votable+xml;content=datalink"
DATALINK_STANDARD = "ivo://ivoa.net/std/DataLink#links-1.0"
STYLES = ("datalink", "product", "direct", "unlabelled", "descriptor")
VARIANTS = [("generic", "dp02"), ("generic", "dp1"), ("rubin", "dp02"), ("rubin", "dp1")]
# processed visit images: they have #this and #cutout rows in Datalink
VISIT_ROWS = (
    "SELECT TOP {n} obs_publisher_did, access_url, access_format FROM ivoa.ObsCore "
    "WHERE calib_level = 2 AND lsst_visit IS NOT NULL"
)
TIMEOUT = 1.5  # client read timeout against held connections


def _small(**kwargs) -> ArchiveSettings:
    return ArchiveSettings(n_visits=2, binning=10, **kwargs)


def _wait_for(condition, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (a condition, not a guess at how long it takes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def _file_bytes(archive: EmbeddedArchive, did: str) -> bytes:
    product = next(p for p in archive.sky.products if p.obs_publisher_did == did)
    path, _ = archive.files.ensure(product)
    return path.read_bytes()


def _this(links) -> str:
    rows = [r for r in links if r["semantics"] == "#this"]
    assert len(rows) == 1
    return rows[0]["access_url"]


def _param(resource, name: str) -> str:
    value = next(p.value for p in resource.params if p.name == name)
    return value.decode() if isinstance(value, bytes) else str(value)


def _follow(archive: EmbeddedArchive, results, row) -> bytes:
    """From an ObsCore row to the file's bytes, the standard way for what the row says."""
    url, fmt = row["access_url"] or "", row["access_format"] or ""
    if fmt == DATALINK_FORMAT and url:
        return requests.get(_this(DatalinkResults.from_result_url(url)), timeout=10).content
    if fmt == DATALINK_FORMAT:  # no URL: the result's Datalink service descriptor
        service = results.get_adhocservice_by_ivoid(DATALINK_STANDARD)
        access_url = _param(service, "accessURL")
        (id_param,) = [p for p in service.groups[0].entries if p.name == "ID"]
        column = results.votable.get_field_by_id(id_param.ref).name
        links = DatalinkResults.from_result_url(
            f"{access_url}?ID={quote(str(row[column]), safe='')}"
        )
        return requests.get(_this(links), timeout=10).content
    # the file itself: a ranged read first, as a header reader does
    head = requests.get(url, headers={"Range": "bytes=0-2879"}, timeout=10)
    assert head.status_code == 206, head.status_code
    assert head.headers["Content-Type"] == "application/fits"
    assert head.headers["Content-Range"].startswith("bytes 0-2879/")
    assert head.content.startswith(b"SIMPLE  =")
    whole = requests.get(url, timeout=10)
    assert whole.content[:2880] == head.content
    return whole.content


@pytest.mark.parametrize("profile, naming", VARIANTS)
@pytest.mark.parametrize("style", STYLES)
def test_each_access_style_leads_to_the_file(style, profile, naming):
    with EmbeddedArchive(_small(access_style=style, profile=profile, naming=naming)) as archive:
        results = pyvo.dal.TAPService(archive.tap_url).search(VISIT_ROWS.format(n=2))
        assert len(results) == 2
        base = archive.base_url
        for row in results:
            did, url, fmt = row["obs_publisher_did"], row["access_url"], row["access_format"]
            product = next(p for p in archive.sky.products if p.obs_publisher_did == did)
            expected_url = {
                "datalink": f"{base}/datalink/links?ID=",
                "product": f"{base}/product/{product.file_path}",
                "direct": f"{base}/data/{product.file_path}",
                "unlabelled": f"{base}/data/{product.file_path}",
                "descriptor": "",
            }[style]
            if style == "datalink":
                assert url.startswith(expected_url)
            else:
                assert (url or "") == expected_url
            assert (fmt or "") == {"direct": "image/fits", "unlabelled": ""}.get(
                style, DATALINK_FORMAT
            )
            data = _follow(archive, results, row)
            assert hashlib.md5(data).digest() == hashlib.md5(_file_bytes(archive, did)).digest()


@pytest.mark.parametrize("naming", ["dp02", "dp1"])
def test_product_url_redirects_to_datalink_for_the_publisher_did(naming):
    with EmbeddedArchive(_small(access_style="product", naming=naming)) as archive:
        row = pyvo.dal.TAPService(archive.tap_url).search(VISIT_ROWS.format(n=1))[0]
        for method in ("GET", "HEAD"):
            reply = requests.request(method, row["access_url"], allow_redirects=False, timeout=10)
            assert reply.status_code == 303
            location = reply.headers["Location"]
            assert location == (
                f"{archive.datalink_url}?ID={quote(row['obs_publisher_did'], safe='')}"
            )
        links = DatalinkResults.from_result_url(location)
        assert {r["ID"] for r in links} == {row["obs_publisher_did"]}
        missing = requests.get(archive.base_url + "/product/no/such.fits", timeout=10)
        assert missing.status_code == 404


@pytest.mark.parametrize("profile", ["generic", "rubin"])
def test_descriptor_style_lets_pyvo_batch_datalink(profile):
    """Even the rubin profile references the ID column when the descriptor is the only way."""
    with EmbeddedArchive(_small(access_style="descriptor", profile=profile)) as archive:
        results = pyvo.dal.TAPService(archive.tap_url).search(VISIT_ROWS.format(n=3))
        service = results.get_adhocservice_by_ivoid(DATALINK_STANDARD)
        assert _param(service, "accessURL") == archive.datalink_url
        (param,) = service.groups[0].entries
        assert (param.name, param.ref) == ("ID", "obs_publisher_did")
        assert results.votable.get_field_by_id("obs_publisher_did").name == "obs_publisher_did"
        links = list(results.iter_datalinks())
        assert [_this(dl) for dl in links]  # one #this per row
        # pyvo batches and yields out of row order (unless preserve_order=True)
        assert all(len({r["ID"] for r in dl}) == 1 for dl in links)
        assert {next(iter(dl))["ID"] for dl in links} == set(results["obs_publisher_did"])


def test_rubin_keeps_its_empty_descriptor_in_other_styles():
    with EmbeddedArchive(_small(access_style="direct", profile="rubin")) as archive:
        results = pyvo.dal.TAPService(archive.tap_url).search(VISIT_ROWS.format(n=1))
        assert list(results.get_adhocservice_by_ivoid(DATALINK_STANDARD).groups[0].entries) == []


# -- Datalink with several IDs ---------------------------------------------------------------


def _dids(archive: EmbeddedArchive, n: int) -> list[str]:
    rows = pyvo.dal.TAPService(archive.tap_url).search(VISIT_ROWS.format(n=n))
    return [str(d) for d in rows["obs_publisher_did"]]


def _links(archive: EmbeddedArchive, ids: list[str]) -> list[tuple[str, str]]:
    reply = requests.post(archive.datalink_url, data=[("ID", i) for i in ids], timeout=10)
    reply.raise_for_status()
    import io

    from astropy.io.votable import parse_single_table

    table = parse_single_table(io.BytesIO(reply.content)).to_table()
    return [(str(r["ID"]), str(r["semantics"])) for r in table]


def test_datalink_multi_id_first_answers_only_the_first_id():
    with EmbeddedArchive(_small(datalink_multi_id="first")) as archive:
        ids = _dids(archive, 3)
        rows = _links(archive, ids)
        assert {i for i, _ in rows} == {ids[0]}
        assert ("#this" in {s for _, s in rows}) and len(rows) == 2


def test_datalink_shuffled_rows_are_out_of_order_but_complete():
    with EmbeddedArchive(_small()) as grouped_archive:
        ids = _dids(grouped_archive, 4)
        grouped = _links(grouped_archive, ids)
    with EmbeddedArchive(_small(datalink_order="shuffled")) as archive:
        assert _dids(archive, 4) == ids  # same seed, same sky
        shuffled = _links(archive, ids)
        assert _links(archive, ids) == shuffled  # deterministic
        assert _links(archive, ids[:1]) == grouped[:2]  # one ID: nothing to shuffle
    assert sorted(shuffled) == sorted(grouped) and len(grouped) == 8
    order = [i for i, _ in shuffled]
    runs = [i for n, i in enumerate(order) if n == 0 or order[n - 1] != i]
    assert len(runs) > len(set(order))  # some ID's rows are not consecutive


# -- hanging and Range faults -------------------------------------------------------------


@pytest.fixture(scope="module")
def direct():
    with EmbeddedArchive(_small(access_style="direct")) as running:
        yield running


@pytest.fixture
def data_url(direct):
    yield str(pyvo.dal.TAPService(direct.tap_url).search(VISIT_ROWS.format(n=1))[0]["access_url"])
    direct.set_faults(FaultPlan())


def _raw(url: str, method: str = "GET", headers: str = "", timeout: float = TIMEOUT):
    """Send one request on a plain socket; return (bytes received, how it ended)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.settimeout(timeout)
    sock.sendall(
        f"{method} {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{headers}\r\n".encode()
    )
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
            if method == "HEAD" and b"\r\n\r\n" in received:
                return received, "answered"
        return received, "closed"
    except TimeoutError:
        return received, "timeout"
    finally:
        sock.close()


def test_head_stall_never_answers_head_but_ranged_get_works(direct, data_url):
    direct.set_faults(FaultPlan.parse(["data.head_stall=1"]))
    with pytest.raises(requests.ReadTimeout):
        requests.head(data_url, timeout=TIMEOUT)
    assert _raw(data_url, "HEAD") == (b"", "timeout")  # not even a status line
    ranged = requests.get(data_url, headers={"Range": "bytes=0-2879"}, timeout=TIMEOUT)
    assert ranged.status_code == 206 and ranged.content.startswith(b"SIMPLE")
    assert direct.faults.report()["data"]["head_stall"] == 2
    # other endpoints are not affected: the fault is per endpoint
    assert requests.head(direct.tap_url + "/availability", timeout=TIMEOUT).status_code == 200


def test_stall_holds_any_request(direct, data_url):
    direct.set_faults(FaultPlan.parse(["tap.stall=1"]))
    with pytest.raises(requests.ReadTimeout):
        requests.get(direct.tap_url + "/availability", timeout=TIMEOUT)
    assert requests.get(data_url, timeout=TIMEOUT).status_code == 200
    assert direct.faults.report() == {"tap_availability": {"stall": 1}}


def test_stall_body_sends_headers_and_half_then_nothing(direct, data_url):
    size = len(requests.get(data_url, timeout=10).content)
    direct.set_faults(FaultPlan.parse(["data.stall_body=1"]))
    received, ending = _raw(data_url)
    assert ending == "timeout"  # the connection stayed open
    header, _, body = received.partition(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.1 200") and f"Content-Length: {size}".encode() in header
    assert len(body) == size // 2
    assert direct.faults.report()["data"]["stall_body"] == 1


def test_range_ignored_sends_everything_without_accept_ranges(direct, data_url):
    size = len(requests.get(data_url, timeout=10).content)
    direct.set_faults(FaultPlan.parse(["data.range_ignored=1"]))
    reply = requests.get(data_url, headers={"Range": "bytes=0-2879"}, timeout=10)
    assert reply.status_code == 200 and len(reply.content) == size
    assert "Accept-Ranges" not in reply.headers and "Content-Range" not in reply.headers
    plain = requests.get(data_url, timeout=10)  # no Range: nothing to ignore
    assert plain.headers["Accept-Ranges"] == "bytes"
    assert direct.faults.report() == {"data": {"range_ignored": 1}}


def test_new_faults_repeat_for_a_seed(direct, data_url):
    plan = FaultPlan.parse(["data.range_ignored=0.5"], seed=5)

    def pattern() -> list[int]:
        direct.set_faults(plan)
        return [
            requests.get(data_url, headers={"Range": "bytes=0-9"}, timeout=10).status_code
            for _ in range(16)
        ]

    first = pattern()
    assert pattern() == first
    assert first == [200 if draw(5, "data", n, "range_ignored") < 0.5 else 206 for n in range(16)]
    assert {200, 206} == set(first)


def test_stop_returns_promptly_while_connections_are_held(data_url):
    faults = FaultPlan.parse(["tap.stall=1", "data.head_stall=1", "data.stall_body=1"])
    archive = EmbeddedArchive(_small(access_style="direct", faults=faults)).start()
    url = data_url.replace(urlsplit(data_url).netloc, urlsplit(archive.base_url).netloc)
    endings: list[tuple[bytes, str]] = []
    clients = [
        threading.Thread(target=lambda a=args: endings.append(_raw(*a, timeout=60)))
        for args in ((archive.tap_url + "/availability",), (url, "HEAD"), (url, "GET"))
    ]
    for client in clients:
        client.start()
    _wait_for(lambda: archive._http.held_connections() == 3)
    held = {"tap_availability": {"stall": 1}, "data": {"head_stall": 1, "stall_body": 1}}
    assert archive.faults.report() == held
    assert archive._http.live_threads() == 3
    started = time.monotonic()
    archive.stop()
    assert time.monotonic() - started < 3
    for client in clients:
        client.join(5)
        assert not client.is_alive()
    assert sorted(e for _, e in endings) == ["closed"] * 3  # released, not timed out
    assert archive._http.live_threads() == 0
    name = f"simarchive-request-{urlsplit(archive.base_url).port}"
    assert not [t for t in threading.enumerate() if t.name == name]


def test_held_connection_is_released_when_the_client_gives_up(direct, data_url):
    direct.set_faults(FaultPlan.parse(["data.head_stall=1"]))
    assert _raw(data_url, "HEAD", timeout=0.3) == (b"", "timeout")
    assert direct.faults.report() == {"data": {"head_stall": 1}}
    _wait_for(lambda: direct._http.held_connections() == 0)  # the thread is free again


# -- statistics ------------------------------------------------------------------------------


def test_stats_count_requests_by_method(direct, data_url):
    direct.reset_stats()
    requests.head(data_url, timeout=10)
    requests.head(data_url, timeout=10)
    requests.get(data_url, headers={"Range": "bytes=0-9"}, timeout=10)
    stats = requests.get(direct.base_url + "/_stats", timeout=10).json()["endpoints"]
    assert stats["data"]["methods"] == {"GET": 1, "HEAD": 2, "POST": 0}
    assert (stats["data"]["status"]["200"], stats["data"]["status"]["206"]) == (2, 1)
    # a held HEAD is counted on arrival, though it is never answered
    direct.set_faults(FaultPlan.parse(["data.head_stall=1"]))
    threading.Thread(target=_raw, args=(data_url, "HEAD"), kwargs={"timeout": 30}).start()
    _wait_for(lambda: direct.stats()["data"]["methods"]["HEAD"] == 3)
    assert direct.faults.report() == {"data": {"head_stall": 1}}
    direct.set_faults(FaultPlan())


def test_stats_show_a_harvest_free_of_head_requests():
    """What a client test asserts: a whole path from TAP to bytes, with zero HEADs anywhere."""
    with EmbeddedArchive(_small(access_style="product")) as archive:
        results = pyvo.dal.TAPService(archive.tap_url).search(VISIT_ROWS.format(n=1))
        _follow(archive, results, results[0])
        stats = archive.stats()
        assert {"tap_sync", "product", "datalink", "files"} <= set(stats)
        assert sum(s["methods"]["HEAD"] for s in stats.values()) == 0
        assert stats["product"]["methods"]["GET"] == 1


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value", [("access_style", "ftp"), ("datalink_multi_id", "some"), ("datalink_order", "x")]
)
def test_settings_refuse_unknown_values_in_one_line(key, value):
    with pytest.raises(ValueError, match=f"^{key} '{value}' is not one of [^\n]+$"):
        ArchiveSettings(**{key: value})


def test_cli_and_profile_expose_the_settings():
    from pydantic import ValidationError

    from obsharvest.flows.cli import build_parser
    from obsharvest.flows.params import Service

    args = build_parser().parse_args(
        [
            "archive",
            "--access-style",
            "descriptor",
            "--datalink-multi-id",
            "first",
            "--datalink-order",
            "shuffled",
            "--fault",
            "data.head_stall=1",
        ]
    )
    assert (args.access_style, args.datalink_multi_id, args.datalink_order) == (
        "descriptor",
        "first",
        "shuffled",
    )
    embedded = Service(embedded={"access_style": "direct", "faults": ["files.stall=0.1"]}).embedded
    assert embedded.access_style == "direct" and embedded.datalink_order == "grouped"
    with pytest.raises(ValidationError, match="access_style"):
        Service(embedded={"access_style": "ftp"})
    with pytest.raises(ValidationError, match="unknown kind"):
        Service(embedded={"faults": ["files.hang=1"]})
