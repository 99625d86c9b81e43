"""tasks/sandbox.py's ordered_map and pool_size: the in-process and pooled paths agree."""

from __future__ import annotations

import pytest

from fineflow.tasks.sandbox import available_cores, ordered_map, pool_size
from tests.helpers.sandbox_extractors import square_or_raise


def test_results_come_back_in_order_in_process_and_on_a_pool() -> None:
    calls = [(n,) for n in range(40)]
    here = list(ordered_map(square_or_raise, calls, 1, "square"))
    pooled = list(ordered_map(square_or_raise, iter(calls), 2, "square"))
    assert here == pooled == [n * n for n in range(40)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_call_that_raises_fails_the_map_naming_the_work(workers: int) -> None:
    with pytest.raises((RuntimeError, ValueError), match="negative: -3") as err:
        list(ordered_map(square_or_raise, [(2,), (-3,), (4,)], workers, "square"))
    if workers > 1:
        assert str(err.value).startswith("a square worker failed (error)")


def test_pool_size_starts_no_pool_for_few_items() -> None:
    assert pool_size(4, 10, 400) == 1
    assert pool_size(4, 400, 400) == 4
    assert pool_size(None, 400, 400) == available_cores()
