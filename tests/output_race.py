"""Worker processes for the rounds of runs started together into one new output.

A full harvest costs seconds of Prefect start-up per run; what races between runs sharing
an output is only what they do to it: the preflight's write probes (into an output that
does not exist yet), storing images (one of them the same for every run), appending
Parquet rows and rewriting the gallery index. Each worker here is a process of its own
(its own fsspec instances and listing caches, as separate runs have), kept for all the
rounds so that its imports are paid once; a barrier starts the workers' steps of a round
together. The library functions are the ones a run calls, not copies.
"""

from __future__ import annotations

import multiprocessing
import traceback
from typing import Any

SHARED_KEY = "lsst.calexp/i/shared.fits"  # every run stores this image (same bytes)
BARRIER_TIMEOUT = 120.0


def run_round(worker: int, output_url: str, options: dict[str, Any], barrier) -> None:
    """What one run does to the output, in the order a run does it."""
    import pyarrow as pa

    from obsharvest.flows.params import HarvestParams
    from obsharvest.flows.preflight import check_storage
    from obsharvest.metadata import MetadataStore
    from obsharvest.products.gallery import GALLERY_DIR, write_index
    from obsharvest.storage.output import Output
    from obsharvest.storage.store import ObjectStore

    params = HarvestParams.model_validate(
        {
            "service": {"tap_url": "http://127.0.0.1:9/tap"},
            "ra": 62.0,
            "dec": -37.0,
            "output_url": output_url,
            "output_storage_options": options,
        }
    )
    barrier.wait(BARRIER_TIMEOUT)  # the three preflights at once, into a new output
    check_storage(params)
    store = ObjectStore(params.storage_url, options)
    barrier.wait(BARRIER_TIMEOUT)
    shared = store.put_stream(SHARED_KEY, [b"SIMPLE  = T" + b" " * 2869])
    own = store.put_stream(f"lsst.calexp/i/own-{worker}.fits", [bytes([65 + worker]) * 2880])
    png = store.put_stream(f"quicklooks/own-{worker}.png", [b"\x89PNG fake " + bytes([worker])])
    target = f"target-{worker}"
    rows = pa.table(
        {
            "obsh_target_name": [target, target],
            "obs_publisher_did": [f"ivo://test/own-{worker}", "ivo://test/shared"],
            "obs_id": [f"own-{worker}", "shared"],
            "dataproduct_subtype": ["lsst.calexp", "lsst.calexp"],
            "lsst_band": ["i", "i"],
            "obsh_verdict": ["contains", "contains"],
            "obsh_stored": [True, True],
            "obsh_storage_uri": [own.uri, shared.uri],
            "obsh_quicklook_uri": [png.uri, None],
            "obsh_run_id": [f"run-{worker}"] * 2,
        }
    )
    MetadataStore(Output(output_url, options)).append(rows, run_id=f"run-{worker}")
    fs, root = store.fs, store.fs._strip_protocol(output_url).rstrip("/")
    fs.makedirs(f"{root}/{GALLERY_DIR}", exist_ok=True)  # as write_footprints does
    fs.pipe_file(f"{root}/{GALLERY_DIR}/{target}-footprint.png", b"\x89PNG map")
    barrier.wait(BARRIER_TIMEOUT)  # the index rewrites at once
    write_index(Output(output_url, options))


def _serve(worker: int, jobs, results, barrier, env: dict[str, str]) -> None:
    import os

    os.environ.update(env)
    while (job := jobs.get()) is not None:
        output_url, options = job
        try:
            run_round(worker, output_url, options, barrier)
            results.put((worker, None))
        except BaseException:  # reported by the test, with its traceback
            barrier.abort()  # the others must not wait for this one
            results.put((worker, traceback.format_exc()))


class Workers:
    """``n`` processes that each play one run per round (spawned: nothing inherited)."""

    def __init__(self, n: int, env: dict[str, str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.barrier = ctx.Barrier(n)
        self.results = ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(n)]
        self.procs = [
            ctx.Process(
                target=_serve, args=(i, self.jobs[i], self.results, self.barrier, env), daemon=True
            )
            for i in range(n)
        ]
        for proc in self.procs:
            proc.start()

    def round(self, output_url: str, options: dict[str, Any], timeout: float = 300.0) -> dict:
        """Run one round into ``output_url``; return {worker: traceback or None}."""
        self.barrier.reset()
        for jobs in self.jobs:
            jobs.put((output_url, options))
        return dict(self.results.get(timeout=timeout) for _ in self.procs)

    def close(self) -> None:
        for jobs in self.jobs:
            jobs.put(None)
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
