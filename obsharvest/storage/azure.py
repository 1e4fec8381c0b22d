"""Azure Blob specifics that fsspec's adlfs leaves out: a server-side copy, waited for.

adlfs's ``cp_file`` starts a Copy Blob and returns at once. Within one storage account
Azure usually completes the copy before answering (``copy_status`` "success"), but the
service may also answer "pending" and finish later: a caller that reports an object
stored must wait for the copy to succeed (and must not take "failed" or "aborted" for
done). The Azure SDK is reached through the adlfs file system's own async client and
event loop, so the credentials and timeouts are the ones the run configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fsspec.asyn import sync

from obsharvest.errors import StorageError

POLL_SECONDS = 0.5


def copy_blob(fs: Any, source: str, destination: str, wait_seconds: float) -> None:
    """Copy blob ``source`` onto ``destination`` (paths as adlfs names them, container
    first) on the server, and return once Azure reports the copy complete.

    Raises :class:`FileNotFoundError` when the source is gone and :class:`StorageError`
    when the copy fails, is aborted or is still pending after ``wait_seconds``."""
    sync(fs.loop, _copy_blob, fs, source, destination, wait_seconds)


async def _copy_blob(fs: Any, source: str, destination: str, wait_seconds: float) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    src_container, src_blob, _ = fs.split_path(source, delimiter="/")
    dst_container, dst_blob, _ = fs.split_path(destination, delimiter="/")
    service = fs.service_client
    src = service.get_container_client(src_container).get_blob_client(blob=src_blob)
    dst = service.get_container_client(dst_container).get_blob_client(blob=dst_blob)
    try:
        started = await dst.start_copy_from_url(src.url)
    except ResourceNotFoundError as exc:
        raise FileNotFoundError(source) from exc
    status = started.get("copy_status")
    deadline = time.monotonic() + wait_seconds
    while status == "pending" and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        props = await dst.get_blob_properties()
        status = props.copy.status
    if status == "pending":  # give up: a copy finished later must not land unnoticed
        with contextlib.suppress(Exception):
            await dst.abort_copy(started.get("copy_id"))
    if status != "success":
        raise StorageError(f"copying {source} to {destination} ended {status or 'unknown'}")
