from __future__ import annotations

from autoscaler.core.config import EXAMPLE_CONFIG, parse_config
from autoscaler.core.observe import infer_upstreams
from autoscaler.core.queries import QueryResult, make_sample

CFG = parse_config(EXAMPLE_CONFIG)


def result(*pairs: tuple[str, str]) -> QueryResult:
    return QueryResult(
        query="q",
        samples=tuple(make_sample({"dataset": d, "operator": o}, 1.0, 0.0) for d, o in pairs),
    )


def test_chain_follows_operator_numbering() -> None:
    r = result(
        ("ds", "Input_0"),
        ("ds", "ReadRange_1"),
        ("ds", "MapBatches(decode)_2"),
        ("ds", "MapBatches(Infer)_3"),
    )
    assert infer_upstreams(CFG, r) == {"decode": "ReadRange_1", "infer": "decode"}


def test_numbering_not_lexical() -> None:
    r = result(("ds", "MapBatches(Infer)_10"), ("ds", "MapBatches(decode)_9"))
    assert infer_upstreams(CFG, r) == {"infer": "decode"}


def test_conflicting_datasets_give_no_edge() -> None:
    r = result(
        ("a", "ReadRange_1"),
        ("a", "MapBatches(Infer)_2"),
        ("b", "MapBatches(decode)_1"),
        ("b", "MapBatches(Infer)_2"),
    )
    assert "infer" not in infer_upstreams(CFG, r)


def test_failed_query_gives_nothing() -> None:
    assert infer_upstreams(CFG, QueryResult.failed("q", "boom")) == {}
