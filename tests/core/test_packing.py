from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.core.packing import Item, PackResult, first_fit, first_fit_decreasing


def naive_ffd(capacity: Mapping[str, float], node_count: int, items: Sequence[Item]) -> list[dict[str, int]]:
    """One copy at a time, node by node: the textbook algorithm the bulk version must reproduce."""

    def size(need: Mapping[str, float]) -> tuple[float, float]:
        shares = [a / capacity[r] if capacity.get(r, 0) > 0 else math.inf for r, a in need.items() if a > 0]
        return (-max(shares, default=0.0), -sum(shares))

    left = [dict(capacity) for _ in range(node_count)]
    placed: list[dict[str, int]] = [{} for _ in range(node_count)]
    for name, need, count in sorted(items, key=lambda it: (*size(it[1]), it[0])):
        for _ in range(count):
            for i in range(node_count):
                if all(left[i].get(r, 0.0) + 1e-9 >= a for r, a in need.items() if a > 0):
                    for r, a in need.items():
                        left[i][r] = left[i].get(r, 0.0) - a
                    placed[i][name] = placed[i].get(name, 0) + 1
                    break
    return placed


def assert_consistent(capacity: Mapping[str, float], items: Sequence[Item], result: PackResult) -> None:
    for node, left in zip(result.nodes, result.residual, strict=True):
        for res, cap in capacity.items():
            used = sum(node.get(name, 0) * need.get(res, 0.0) for name, need, _ in items)
            assert used <= cap + 1e-6
            assert left[res] == pytest.approx(cap - used, abs=1e-6)
    for name, _, count in items:
        assert result.placed(name) + result.unplaced.get(name, 0) == count


def test_exact_fit() -> None:
    r = first_fit_decreasing({"CPU": 4}, 2, [("a", {"CPU": 2}, 4)])
    assert r.ok
    assert [dict(n) for n in r.nodes] == [{"a": 2}, {"a": 2}]
    assert r.used_nodes == 2


def test_fragmentation_reported_as_unplaced() -> None:
    # 3 × 3 CPU = 9 CPU fits into 3 × 4 CPU summed, but not onto whole 4-CPU nodes beyond one per node.
    r = first_fit_decreasing({"CPU": 4}, 3, [("big", {"CPU": 3}, 4)])
    assert not r.ok
    assert dict(r.unplaced) == {"big": 1}
    assert r.placed("big") == 3


def test_bigger_items_go_first_and_small_ones_fill_gaps() -> None:
    r = first_fit_decreasing({"CPU": 4}, 2, [("small", {"CPU": 1}, 2), ("big", {"CPU": 3}, 2)])
    assert r.ok
    assert [dict(n) for n in r.nodes] == [{"big": 1, "small": 1}, {"big": 1, "small": 1}]


def test_multi_resource_gpu_bound() -> None:
    # GPU runs out before CPU: the third GPU slot needs a node of its own.
    cap = {"CPU": 8, "GPU": 2}
    r = first_fit_decreasing(cap, 1, [("infer", {"CPU": 1, "GPU": 1}, 3), ("decode", {"CPU": 1}, 4)])
    assert dict(r.unplaced) == {"infer": 1}
    assert dict(r.nodes[0]) == {"infer": 2, "decode": 4}
    assert r.residual[0]["CPU"] == pytest.approx(2.0)


def test_float_noise_still_fits() -> None:
    r = first_fit_decreasing({"CPU": 0.3}, 1, [("a", {"CPU": 0.1}, 3)])
    assert r.ok


def test_item_without_resources_still_needs_a_node() -> None:
    assert first_fit_decreasing({"CPU": 1}, 1, [("free", {}, 5)]).ok
    none = first_fit_decreasing({"CPU": 1}, 0, [("free", {}, 5)])
    assert dict(none.unplaced) == {"free": 5}


def test_zero_nodes_and_no_items() -> None:
    r = first_fit_decreasing({"CPU": 4}, 0, [])
    assert r.ok and r.nodes == () and r.used_nodes == 0
    r = first_fit_decreasing({"CPU": 4}, 3, [("a", {"CPU": 1}, 0)])
    assert r.ok and r.used_nodes == 0


def test_resource_missing_on_node_never_fits() -> None:
    r = first_fit_decreasing({"CPU": 4}, 5, [("gpu", {"GPU": 1}, 1)])
    assert dict(r.unplaced) == {"gpu": 1}


def test_same_item_twice_is_merged() -> None:
    r = first_fit_decreasing({"CPU": 2}, 2, [("a", {"CPU": 1}, 1), ("a", {"CPU": 1}, 2)])
    assert r.placed("a") == 3
    with pytest.raises(ValueError, match="different resources"):
        first_fit_decreasing({"CPU": 2}, 2, [("a", {"CPU": 1}, 1), ("a", {"CPU": 2}, 1)])


@pytest.mark.parametrize(
    ("count", "items"),
    [
        (-1, []),
        (1, [("a", {"CPU": 1}, -1)]),
        (1, [("a", {"CPU": math.nan}, 1)]),
        (1, [("a", {"CPU": -1}, 1)]),
        (1, [("a", {"CPU": math.inf}, 1)]),
    ],
)
def test_invalid_input_raises(count: int, items: list[Item]) -> None:
    with pytest.raises(ValueError):
        first_fit_decreasing({"CPU": 4}, count, items)


def test_room_for_counts_leftovers_across_nodes() -> None:
    r = first_fit_decreasing({"CPU": 4}, 3, [("big", {"CPU": 3}, 3)])
    assert r.room_for({"CPU": 1}, 10) == 3
    assert r.room_for({"CPU": 1}, 2) == 2
    assert r.room_for({"CPU": 2}, 10) == 0


def test_thousand_nodes_pack_quickly_and_exactly() -> None:
    # 8 "a" per node (GPU-bound) on 625 nodes leave 40 CPUs each; the "b" fit into that room.
    items: list[Item] = [("a", {"CPU": 3, "GPU": 1}, 5000), ("b", {"CPU": 1}, 9000)]
    r = first_fit_decreasing({"CPU": 64, "GPU": 8}, 1000, items)
    assert r.ok
    assert r.used_nodes == 625
    assert dict(r.nodes[0]) == {"a": 8, "b": 40}
    assert dict(r.nodes[300]) == {"a": 8}


item_names = st.sampled_from(["a", "b", "c", "d"])
needs = st.fixed_dictionaries(
    {"CPU": st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0])},
    optional={"GPU": st.sampled_from([0.0, 1.0, 2.0]), "mem": st.sampled_from([1.0, 4.0, 8.0])},
)


@st.composite
def packing_inputs(draw: st.DrawFn) -> tuple[dict[str, float], int, list[Item]]:
    capacity = {
        "CPU": draw(st.sampled_from([2.0, 4.0, 8.0, 16.0])),
        "GPU": draw(st.sampled_from([0.0, 1.0, 2.0, 4.0])),
        "mem": draw(st.sampled_from([8.0, 16.0, 64.0])),
    }
    names = draw(st.lists(item_names, unique=True, max_size=4))
    items: list[Item] = [(n, draw(needs), draw(st.integers(0, 12))) for n in names]
    return capacity, draw(st.integers(0, 8)), items


@settings(max_examples=300, deadline=None)
@given(packing_inputs())
def test_bulk_placement_equals_textbook_first_fit(inputs: tuple[dict[str, float], int, list[Item]]) -> None:
    capacity, count, items = inputs
    result = first_fit_decreasing(capacity, count, items)
    assert [dict(n) for n in result.nodes] == naive_ffd(capacity, count, items)
    assert_consistent(capacity, items, result)
    assert first_fit_decreasing(capacity, count, items) == result
    used = result.used_nodes
    assert all(result.nodes[i] for i in range(used)) and not any(result.nodes[used:])


@settings(max_examples=300, deadline=None)
@given(packing_inputs(), st.integers(0, 10))
def test_resized_packing_equals_packing_again(
    inputs: tuple[dict[str, float], int, list[Item]], other: int
) -> None:
    capacity, count, items = inputs
    result = first_fit_decreasing(capacity, count, items)
    resized = result.resized(other)
    if resized is None:
        # Only more nodes than a packing that left copies out needs a new packing.
        assert other > count and not result.ok
        return
    again = first_fit_decreasing(capacity, other, items)
    assert resized == again
    assert [dict(n) for n in resized.nodes] == [dict(n) for n in again.nodes]
    assert dict(resized.unplaced) == dict(again.unplaced)
    assert resized.used_nodes == again.used_nodes and resized.node_count == other


@settings(max_examples=300, deadline=None)
@given(packing_inputs())
def test_without_unplaced_equals_packing_the_rest(inputs: tuple[dict[str, float], int, list[Item]]) -> None:
    capacity, count, items = inputs
    result = first_fit_decreasing(capacity, count, items)
    rest = [(name, need, n - result.unplaced.get(name, 0)) for name, need, n in items]
    assert result.without_unplaced() == first_fit_decreasing(capacity, count, rest)
    assert result.without_unplaced().ok


def test_runs_describe_the_nodes() -> None:
    r = first_fit_decreasing({"CPU": 4}, 5, [("big", {"CPU": 3}, 3), ("small", {"CPU": 1}, 4)])
    assert [(dict(run.placed), run.node_count) for run in r.runs] == [
        ({"big": 1, "small": 1}, 3),
        ({"small": 1}, 1),
        ({}, 1),
    ]
    assert r.node_count == 5 and r.used_nodes == 4
    last = r.last_used()
    assert last is not None and dict(last.placed) == {"small": 1} and last.left["CPU"] == 3


def test_first_fit_keeps_the_given_order() -> None:
    # Smallest first: the 1-CPU copies fill both nodes and the 3-CPU one finds no room.
    r = first_fit({"CPU": 4}, 2, [("small", (("CPU", 1.0),), 8), ("big", (("CPU", 3.0),), 1)])
    assert dict(r.unplaced) == {"big": 1}
