"""Usable traces from fatal signals, in this process and the processes it starts."""

from __future__ import annotations

import faulthandler
import os
import sys


def crash_traces() -> None:
    """On a fatal signal (segfault, abort) print every thread's Python stack to stderr, here
    and in the processes this one starts (Prefect flow runs, Dask workers): a crash inside
    a C extension then says where it happened instead of ending with a bare exit code."""
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    if faulthandler.is_enabled():  # already (PYTHONFAULTHANDLER, -X faulthandler, pytest)
        return
    try:
        faulthandler.enable(all_threads=True)
    except (AttributeError, ValueError, OSError):  # sys.stderr replaced by one with no fd
        if sys.__stderr__ is None:  # started without a stderr at all: nowhere to print
            return
        faulthandler.enable(file=sys.__stderr__, all_threads=True)
