"""The raw-transfer limit: a concurrent HTTP GET of exactly the files obsharvest stored.

No query, no Datalink, no header reads, no disk: the signed URLs are resolved before the
clock starts and every body is read and thrown away. What is left is what the network
(latency per request + bandwidth cap) allows for those bytes.

The correct-harvest limit (issue 25, item 1) GETs the same files with the same number of
connections and does what storing them correctly costs, without verification: each body
is SHA-256 and MD5 hashed as it streams (as obsharvest's store does, ``put_stream``),
written to a temporary file in the target directory, flushed and ``os.fsync``-ed, renamed
into place, and given a ``.sha256`` sidecar (``sidecar_text``, the format obsharvest writes).
"""

from __future__ import annotations

import hashlib
import io
import os
import resource
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from astropy.io.votable import parse as parse_votable
from requests.adapters import HTTPAdapter

from obsharvest.storage.store import sidecar_text

THIS = "#this"


@dataclass
class LimitRun:
    seconds: float
    files: int
    bytes: int
    cpu: float = 0.0  # CPU seconds of this process during the run (all threads)
    fsync_seconds: float = 0.0  # correct-harvest limit: wall seconds in fsync, summed over threads


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


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


def _session(workers: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=workers, pool_maxsize=workers)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def run_limit(urls: Sequence[str], workers: int = 16, chunk: int = 1 << 20) -> LimitRun:
    session = _session(workers)

    def get(url: str) -> int:
        with session.get(url, stream=True, timeout=120) as reply:
            reply.raise_for_status()
            return sum(len(block) for block in reply.iter_content(chunk))

    cpu0 = _cpu()
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        total = sum(pool.map(get, urls))
    seconds = time.perf_counter() - started
    cpu = _cpu() - cpu0
    session.close()
    return LimitRun(seconds, len(urls), total, cpu)


def run_correct_limit(
    urls: Sequence[str], output: Path, workers: int = 16, chunk: int = 1 << 20
) -> LimitRun:
    """The same GETs as :func:`run_limit`, each body hashed (SHA-256 + MD5) and stored
    durably under ``output``: temporary file in the same directory, flush + fsync, rename,
    ``.sha256`` sidecar. No verification, no metadata."""
    session = _session(workers)
    output.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    fsync_total = [0.0]

    def get(k: int, url: str) -> int:
        name = f"file-{k:06d}.fits"
        final = output / name
        temp = output / f".{name}.part-{uuid.uuid4().hex}"
        sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        with session.get(url, stream=True, timeout=120) as reply:
            reply.raise_for_status()
            with open(temp, "wb") as fh:
                for block in reply.iter_content(chunk):
                    if not block:
                        continue
                    size += len(block)
                    sha.update(block)
                    md5.update(block)
                    fh.write(block)
                fh.flush()
                t0 = time.perf_counter()
                os.fsync(fh.fileno())
                spent = time.perf_counter() - t0
        os.replace(temp, final)
        digest = sha.hexdigest()
        sidecar = output / f"{name}.sha256"
        sidecar.write_text(sidecar_text(name, digest, md5.hexdigest(), size))
        with lock:
            fsync_total[0] += spent
        return size

    cpu0 = _cpu()
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        total = sum(pool.map(get, range(len(urls)), urls))
    seconds = time.perf_counter() - started
    cpu = _cpu() - cpu0
    session.close()
    return LimitRun(seconds, len(urls), total, cpu, fsync_total[0])
