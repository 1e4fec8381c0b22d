"""A service session merges the environment's proxy and CA settings as requests does,
read once per scheme+host (requests reads the environment on every request)."""

from __future__ import annotations

import requests

from obsharvest.net.http import ServiceSession

URLS = (
    "http://archive.example/tap/sync",
    "http://archive.example/files/a.fits",
    "https://archive.example/tap",
    "http://internal.example:8080/datalink?ID=x",
    "https://bucket.s3.example/obj?X-Amz-Signature=s",
)


def _environment(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://tls-proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,.s3.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")


def test_the_environment_is_merged_as_requests_merges_it(monkeypatch):
    _environment(monkeypatch)
    ours, plain = ServiceSession(None, ["http://archive.example/tap"]), requests.Session()
    for _ in range(2):  # the second time from what was kept
        for url in URLS:
            for stream in (None, True):
                got = ours.merge_environment_settings(url, {}, stream, None, None)
                want = plain.merge_environment_settings(url, {}, stream, None, None)
                assert got == want, url
    proxied = ours.merge_environment_settings(URLS[0], {}, None, None, None)
    assert proxied["proxies"]["http"] == "http://proxy.example:3128"
    assert "http" not in ours.merge_environment_settings(URLS[3], {}, None, None, None)["proxies"]


def test_what_is_kept_cannot_be_changed_through_a_reply_and_own_proxies_are_merged_afresh(
    monkeypatch,
):
    _environment(monkeypatch)
    ours = ServiceSession(None, ["http://archive.example/tap"])
    first = ours.merge_environment_settings(URLS[0], {}, None, None, None)
    first["proxies"]["http"] = "http://changed.example"
    again = ours.merge_environment_settings(URLS[0], {}, None, None, None)
    assert again["proxies"]["http"] == "http://proxy.example:3128"
    own = ours.merge_environment_settings(
        URLS[0], {"http": "http://mine.example:1"}, None, None, None
    )
    assert own["proxies"]["http"] == "http://mine.example:1"
