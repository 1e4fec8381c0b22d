"""How the flow cuts work into task-sized batches (a pure helper of flows/harvest.py)."""

from __future__ import annotations

import pytest

from obsharvest.runtime.workers import batches as _chunks


@pytest.mark.parametrize(
    ("n", "size", "workers", "sizes"),
    [
        (304, 250, 1, [152, 152]),  # even, not 250 + 54
        (578, 250, 2, [145, 145, 145, 143]),  # a multiple of the workers, not 3 x 193
        (578, 250, 1, [193, 193, 192]),
        (10, 250, 2, [10]),  # one batch is enough: one task
        (260, 250, 2, [130, 130]),
        (7, 2, 4, [2, 2, 2, 1]),
        (1, 250, 4, [1]),  # never more batches than items
        (0, 250, 2, []),
    ],
)
def test_batches_are_even_and_fill_the_workers(n, size, workers, sizes):
    items = list(range(n))
    batches = list(_chunks(items, size, workers))
    assert [len(b) for b in batches] == sizes
    assert [x for b in batches for x in b] == items  # nothing lost, nothing repeated, in order
    assert all(len(b) <= size for b in batches)
