"""The raw-transfer limit: a concurrent HTTP GET of exactly the files obsharvest stored.

No query, no Datalink, no header reads, no disk: the signed URLs are resolved before the
clock starts and every body is read and thrown away. What is left is what the network
(latency per request + bandwidth cap) allows for those bytes.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from astropy.io.votable import parse as parse_votable
from requests.adapters import HTTPAdapter

THIS = "#this"


@dataclass
class LimitRun:
    seconds: float
    files: int
    bytes: int


def signed_urls(datalink_url: str, dids: Sequence[str], batch: int = 200) -> list[str]:
    """``#this`` URLs of ``dids`` from Datalink, several IDs per POST (not timed)."""
    urls = []
    with requests.Session() as session:
        for start in range(0, len(dids), batch):
            chunk = list(dids[start : start + batch])
            reply = session.post(datalink_url, data=[("ID", d) for d in chunk], timeout=120)
            reply.raise_for_status()
            table = parse_votable(io.BytesIO(reply.content)).get_first_table().to_table()
            found = {
                str(r["ID"]): str(r["access_url"]) for r in table if str(r["semantics"]) == THIS
            }
            missing = [d for d in chunk if d not in found]
            if missing:
                raise RuntimeError(f"Datalink gave no #this link for {missing[:3]}")
            urls += [found[d] for d in chunk]
    return urls


def run_limit(urls: Sequence[str], workers: int = 16, chunk: int = 1 << 20) -> LimitRun:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=workers, pool_maxsize=workers)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def get(url: str) -> int:
        with session.get(url, stream=True, timeout=120) as reply:
            reply.raise_for_status()
            return sum(len(block) for block in reply.iter_content(chunk))

    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        total = sum(pool.map(get, urls))
    seconds = time.perf_counter() - started
    session.close()
    return LimitRun(seconds, len(urls), total)
