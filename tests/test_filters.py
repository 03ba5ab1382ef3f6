"""The core filter language: parsing and errors, reference semantics, vectorized masks equal to the
reference (property test), the Milvus translation against a real milvus-lite engine, and the
LlamaIndex mapping."""

from __future__ import annotations

import copy
import doctest
import math
import pickle
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3_rag.filters import (
    MAX_DEPTH,
    MAX_TERMS,
    And,
    Comparison,
    FilterError,
    Membership,
    MetadataColumns,
    Or,
    filter_mask,
    matches,
    parse_filter,
    to_dict,
)
from m3_rag.index.milvus_expr import milvus_expression

# ------------------------------------------------------------------ parsing


def test_plain_forms_and_operators_parse() -> None:
    assert parse_filter(None) is None
    assert parse_filter({}) is None
    assert parse_filter({"lang": "en"}) == Comparison("lang", "$eq", "en")
    assert parse_filter({"year": [2023, 2024]}) == Membership("year", "$in", (2023, 2024))
    assert parse_filter({"year": {"$gte": 2020, "$lt": 2030}}) == And(
        (Comparison("year", "$gte", 2020), Comparison("year", "$lt", 2030))
    )
    f = parse_filter({"$or": [{"a": None}, {"b": {"$nin": ["x", 1]}}], "c": {"$ne": True}})
    assert f == And(
        (Or((Comparison("a", "$eq", None), Membership("b", "$nin", ("x", 1)))), Comparison("c", "$ne", True))
    )
    assert parse_filter(f) is f  # parsed filters pass through
    assert parse_filter(to_dict(f)) == f
    assert to_dict(None) == {}
    # equal filters are equal and hash alike; True and 1 are different filters (unlike Python's True == 1)
    assert parse_filter({"flag": True}) != parse_filter({"flag": 1})
    assert parse_filter({"flag": [True]}) != parse_filter({"flag": [1]})
    assert parse_filter({"n": 1}) == parse_filter({"n": 1.0}) and matches({"n": 1}, {"n": 1.0})
    assert len({parse_filter({"flag": True}), parse_filter({"flag": 1}), parse_filter({"flag": True})}) == 2
    assert pickle.loads(pickle.dumps(f)) == f and copy.deepcopy(f) == f
    with pytest.raises(AttributeError):
        f.terms = ()  # type: ignore[misc]  # frozen


def _deep(n: int) -> list:
    deep: list = []
    for _ in range(n):
        deep = [deep]
    return deep


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"year": {"$gte": "2020"}}, r"\$gte compares numbers \(.*store dates as numbers\), got str '2020'"),
        ({"year": {"$lt": True}}, r"\$lt compares numbers .*got bool True"),
        ({"year": {"$gt": None}}, r"\$gt compares numbers .*got NoneType None"),
        (
            {"x": {"$eq": [1, 2]}},
            r"\$eq takes a str, int, float, bool or None \(use \$in for any of several values\), got list",
        ),
        ({"x": {"$in": 3}}, r"\$in takes a list of values, got int 3"),
        ({"x": {"$in": [[1]]}}, r"\$in takes a str, int, float, bool or None, got list"),
        ({"x": {"$regex": "a"}}, r"unknown operator '\$regex'; expected one of \$eq, \$ne"),
        ({"x": {"y": 1}}, r"unknown operator 'y' \(nested metadata is not supported\)"),
        ({"x": {}}, r"empty operator dict"),
        ({"$not": {"x": 1}}, r"unknown operator '\$not' at the top of a filter dict"),
        ({"$and": {"x": 1}}, r"\$and takes a non-empty list of filter dicts, got dict"),
        ({"$or": []}, r"\$or takes a non-empty list"),
        ({"$and": [{}]}, r"every entry of \$and must be a non-empty filter dict"),
        ({"$and": [3]}, r"a filter is a dict such as"),
        ({"bad key": 1}, r"filter key 'bad key' is not allowed: keys must match"),
        ({"a\n": 1}, r"filter key 'a\\n' is not allowed"),
        ({"1a": 1}, r"filter key '1a' is not allowed"),
        ({"k" * 65: 1}, r"is not allowed"),
        ({"x": math.nan}, r"\$eq takes finite numbers, got float nan"),
        ({"x": {"$lte": -math.inf}}, r"takes finite numbers"),
        ({"x": [1, math.inf]}, r"\$in takes finite numbers"),
        ({"x": 2**63}, r"signed 64-bit range"),
        ({"x": "\ud800"}, r"lone surrogate"),
        ({"x": b"bytes"}, r"got bytes"),
        ({"x": np.int64(3)}, r"got int64"),
        ("lang = en", r"a filter is a dict such as \{'lang': 'en'\}, got str"),
        ({"x": {"$eq": _deep(100_000)}}, r"\$eq takes a str, .* got list \[\[\[\[\.\.\.\]\]\]\]$"),
        ({"x": {"$in": "x" * 10_000}}, r"\$in takes a list of values, got str 'xxx.*\.\.\..*xxx'$"),
    ],
)
def test_bad_filters_are_clear_errors(bad: object, message: str) -> None:
    with pytest.raises(FilterError, match=message) as info:
        parse_filter(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_depth_and_size_limits_never_recurse_deeply() -> None:
    deep: dict = {"x": 1}
    for _ in range(200_000):  # far beyond Python's recursion limit
        deep = {"$and": [deep]}
    with pytest.raises(FilterError, match=f"more than {MAX_DEPTH} levels"):
        parse_filter(deep)
    cyclic: dict = {}
    cyclic["$or"] = [cyclic]
    with pytest.raises(FilterError, match="levels"):
        parse_filter(cyclic)
    ok: dict = {"x": 1}
    for _ in range(MAX_DEPTH - 1):
        ok = {"$and": [ok]}
    assert parse_filter(ok).depth == MAX_DEPTH  # type: ignore[union-attr]
    with pytest.raises(FilterError, match="levels deep"):  # one more level through the multi-key AND
        parse_filter({**ok, "y": 2})
    with pytest.raises(FilterError, match=f"at most {MAX_TERMS}|more than {MAX_TERMS}"):
        parse_filter({"x": list(range(MAX_TERMS + 1))})
    with pytest.raises(FilterError, match=f"at most {MAX_TERMS}"):
        parse_filter({"$or": [{"x": i} for i in range(MAX_TERMS + 1)]})
    at_limit = parse_filter({"$or": [{"x": i} for i in range(MAX_TERMS - 3)], "y": 1})  # And(Or(...), y)
    assert at_limit.size == MAX_TERMS  # type: ignore[union-attr]
    with pytest.raises(FilterError, match=f"more than {MAX_TERMS}"):
        parse_filter({"$or": [{"x": i} for i in range(MAX_TERMS - 3)], "y": [1, 2]})
    assert parse_filter({"x": list(range(MAX_TERMS - 1))}).size == MAX_TERMS - 1  # type: ignore[union-attr]
    # hand-built trees are checked too
    node: And | Comparison = Comparison("x", "$eq", 1)
    for _ in range(MAX_DEPTH - 1):
        node = And((node,))
    with pytest.raises(FilterError, match="levels deep"):
        And((node,))
    with pytest.raises(FilterError, match="non-empty tuple"):
        Or(())
    with pytest.raises(FilterError, match="compares numbers"):
        Comparison("x", "$gt", "a")


# ------------------------------------------------------------------ semantics (the table in docs/FILTERS.md)

RECORDS = {
    "T": {"v": True},
    "F": {"v": False},
    "i1": {"v": 1},
    "i0": {"v": 0},
    "f1": {"v": 1.0},
    "s1": {"v": "1"},
    "none": {"v": None},
    "missing": {},
    "sa": {"v": "a"},
    "f25": {"v": 2.5},
    "lst": {"v": [1, 2]},
    "dct": {"v": {"x": 1}},
    "big": {"v": 2**53 + 1},
    "big2": {"v": 2**53},
}

SEMANTICS = [
    ({"v": True}, {"T"}),
    ({"v": False}, {"F"}),
    ({"v": 1}, {"i1", "f1"}),
    ({"v": 1.0}, {"i1", "f1"}),
    ({"v": 0}, {"i0"}),
    ({"v": "1"}, {"s1"}),
    ({"v": None}, {"none", "missing"}),
    ({"v": {"$ne": None}}, set(RECORDS) - {"none", "missing"}),
    ({"v": {"$ne": 1}}, set(RECORDS) - {"i1", "f1"}),
    ({"v": {"$ne": True}}, set(RECORDS) - {"T"}),
    ({"v": {"$in": [True, "a"]}}, {"T", "sa"}),
    ({"v": {"$nin": [1, None]}}, set(RECORDS) - {"i1", "f1", "none", "missing"}),
    ({"v": {"$gt": 0}}, {"i1", "f1", "f25", "big", "big2"}),
    ({"v": {"$lt": 1}}, {"i0"}),
    ({"v": {"$gte": 1, "$lte": 1}}, {"i1", "f1"}),
    ({"v": 2.0**53}, {"big2"}),  # exact, as Python compares int and float
    ({"v": {"$gt": 2.0**53}}, {"big"}),
    ({"v": 2**53 + 1}, {"big"}),
    ({"v": []}, set()),
    ({"v": {"$nin": []}}, set(RECORDS)),
    ({"$or": [{"v": "a"}, {"v": {"$lt": 0.5}}]}, {"sa", "i0"}),
]


@pytest.mark.parametrize(("filter", "expected"), SEMANTICS)
def test_reference_semantics(filter: dict, expected: set[str]) -> None:
    assert {name for name, meta in RECORDS.items() if matches(filter, meta)} == expected
    cols = MetadataColumns([*RECORDS.values(), None])
    mask = filter_mask(filter, cols)
    assert mask.dtype == bool and mask.shape == (len(RECORDS) + 1,)
    assert {name for name, hit in zip(RECORDS, mask) if hit} == expected
    assert not mask[-1]  # a dead row matches nothing, not even $ne / $nin
    assert not matches(filter, None)


def test_no_filter_matches_live_rows_only() -> None:
    cols = MetadataColumns([{}, None, {"a": 1}])
    assert filter_mask(None, cols).tolist() == [True, False, True]
    assert filter_mask({}, cols).tolist() == [True, False, True]
    with pytest.raises(TypeError, match="metadata rows must be dicts or None, got list"):
        MetadataColumns([[1]])  # type: ignore[list-item]


# ------------------------------------------------------------------ vectorized == reference (property)

STORED = st.one_of(
    st.sampled_from([True, False, 0, 1, -1, 1.0, 0.0, -0.0, 2.5, "", "1", "a", "b", "ä", "😀", None]),
    st.sampled_from([2**53, 2**53 + 1, 2.0**53, -(2**63), 2**63 - 1, 2**64, 10**400, math.nan, math.inf, -math.inf]),
    st.sampled_from([[1], [True], ["a"], {"x": 1}, []]),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False).map(lambda x: round(x, 1)),
    st.text(alphabet="ab1", max_size=2),
)
OPERAND = st.one_of(
    st.sampled_from([True, False, 0, 1, 1.0, -0.0, 2.5, "", "1", "a", "ä", None, 2**53, 2**53 + 1, 2.0**53]),
    st.sampled_from([-(2**63), 2**63 - 1, 1e300]),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False).map(lambda x: round(x, 1)),
    st.text(alphabet="ab1", max_size=2),
)
NUMBER = st.one_of(st.integers(-5, 5), st.floats(-5, 5, allow_nan=False), st.sampled_from([2**53, 2.0**53, 1e300]))
KEYS = st.sampled_from(["a", "b", "c"])
LEAF = st.one_of(
    st.builds(lambda k, v: {k: v}, KEYS, OPERAND),
    st.builds(lambda k, vs: {k: vs}, KEYS, st.lists(OPERAND, max_size=4)),
    st.builds(lambda k, op, v: {k: {op: v}}, KEYS, st.sampled_from(["$eq", "$ne"]), OPERAND),
    st.builds(lambda k, op, vs: {k: {op: vs}}, KEYS, st.sampled_from(["$in", "$nin"]), st.lists(OPERAND, max_size=4)),
    st.builds(lambda k, op, v: {k: {op: v}}, KEYS, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), NUMBER),
)
FILTERS = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.builds(lambda op, fs: {op: fs}, st.sampled_from(["$and", "$or"]), st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda a, b: {**a, **b}, inner, inner).filter(bool),
    ),
    max_leaves=8,
)
RECORD = st.one_of(st.none(), st.dictionaries(KEYS, STORED, max_size=3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(RECORD, max_size=25), filter=FILTERS)
def test_filter_mask_equals_matches(records: list, filter: dict) -> None:
    cols = MetadataColumns(records)
    expected = [matches(filter, m) for m in records]
    assert filter_mask(filter, cols).tolist() == expected
    parsed = parse_filter(filter)
    assert filter_mask(parsed, cols).tolist() == expected  # cached columns, parsed input
    assert [matches(parse_filter(to_dict(parsed)), m) for m in records] == expected


def test_matches_agrees_with_plain_python_on_numbers() -> None:
    """The reference itself: numbers compare exactly as Python compares int and float (no float64 rounding)."""
    for stored in (2**53 + 1, 2**63 - 1, 10**400, 0.1, -0.0):
        for wanted in (2**53, 2.0**53, 2**63 - 1, 9.223372036854776e18, 0.1, 0):
            assert matches({"v": wanted}, {"v": stored}) == (stored == wanted)
            assert matches({"v": {"$gt": wanted}}, {"v": stored}) == (stored > wanted)
            assert matches({"v": {"$lte": wanted}}, {"v": stored}) == (stored <= wanted)
    cols = MetadataColumns([{"v": 2**63 - 1}, {"v": 9.223372036854776e18}, {"v": 10**400}])
    assert filter_mask({"v": 2**63 - 1}, cols).tolist() == [True, False, False]
    assert filter_mask({"v": {"$gt": 2**63 - 1}}, cols).tolist() == [False, True, True]


def test_columns_are_built_once_per_key_under_threads() -> None:
    rows = [{"k": i % 7, "s": str(i % 5)} for i in range(5000)]
    cols = MetadataColumns(rows)
    built: list[str] = []
    original = cols._build

    def counting(key: str):  # type: ignore[no-untyped-def]
        built.append(key)
        return original(key)

    cols._build = counting  # type: ignore[method-assign]
    out: list[np.ndarray] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        out.append(filter_mask({"k": {"$in": [1, 3]}, "s": {"$ne": "2"}}, cols))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = [matches({"k": {"$in": [1, 3]}, "s": {"$ne": "2"}}, m) for m in rows]
    assert all(m.tolist() == expected for m in out) and len(out) == 8
    assert sorted(built) == ["k", "s"]
    rows.append({"k": 1})  # the columns copied the sequence: later changes do not leak in
    assert len(cols) == 5000


def test_large_in_lists_are_vectorized() -> None:
    rows = [{"k": i} for i in range(20_000)]
    cols = MetadataColumns(rows)
    wanted = list(range(0, 20_000, 3))
    mask = filter_mask({"k": {"$in": wanted}}, cols)
    assert mask.sum() == len(wanted) and mask[::3].all()
    assert filter_mask({"k": {"$nin": wanted}}, cols).sum() == 20_000 - len(wanted)


# ------------------------------------------------------------------ Milvus translation (milvus-lite)


def test_milvus_expression_shapes() -> None:
    assert milvus_expression(None) == ("", True)
    assert milvus_expression({"v": []}) == (None, True)  # nothing can match: skip the search
    assert milvus_expression({"v": {"$nin": []}}) == ("", True)
    assert milvus_expression({"$or": [{"v": []}, {"w": "x"}]}) == ('(metadata["w"] == "x")', True)
    assert milvus_expression({"$and": [{"v": []}, {"w": True}]}) == (None, True)
    assert milvus_expression({"v": None}) == ('metadata["v"] is null', True)
    assert milvus_expression({"v": {"$ne": None}}) == ('metadata["v"] is not null', True)
    assert milvus_expression({"v": 5}) == ('metadata["v"] == 5', True)
    assert milvus_expression({"v": 1}) == ('metadata["v"] == 1', False)  # true == 1 in Milvus
    assert milvus_expression({"v": {"$ne": 1}}) == ("", False)  # no superset short of everything
    assert milvus_expression({"v": {"$gt": 1}}) == ('metadata["v"] > 1', True)  # no bool is > 1
    assert milvus_expression({"v": {"$gte": 1}}) == ('metadata["v"] >= 1', False)
    assert milvus_expression({"v": {"$nin": ["a", 1, 7]}}) == (
        'metadata["v"] is null or (metadata["v"] != "a" and metadata["v"] != 7)',
        False,
    )
    assert milvus_expression({"v": 'x" or id != "'}).expression == 'metadata["v"] == "x\\" or id != \\""'
    assert milvus_expression({"v": 1}, field="meta2").expression == 'meta2["v"] == 1'
    with pytest.raises(ValueError, match="field must be a Milvus field name"):
        milvus_expression({"v": 1}, field='x"]')
    with pytest.raises(FilterError):
        milvus_expression({"v": {"$gt": "a"}})


MILVUS_VALUES = [
    True, False, 1, 0, 1.0, 0.0, -1, 2, 2.5, -3, 2**53, 2**53 + 1, 2.0**53, 2**63 - 1, -(2**63),
    "1", "0", "a", "b", "", "ä", "😀", 'q"uote', "back\\slash", "new\nline", "it's", 'x" or id != "',
    None, [1, 2], [True], ["a"], {"x": 1}, [],
]  # fmt: skip


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory):
    pymilvus = pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    client = pymilvus.MilvusClient(str(tmp_path_factory.mktemp("filters") / "f.db"))
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", pymilvus.DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("metadata", pymilvus.DataType.JSON)
    schema.add_field("v", pymilvus.DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index("v", index_type="FLAT", metric_type="IP")
    client.create_collection("t", schema=schema, index_params=index)
    metas: list[dict] = [{}]  # one record without the keys
    for i, value in enumerate(MILVUS_VALUES):
        metas.append({"a": value, "b": MILVUS_VALUES[(7 * i + 3) % len(MILVUS_VALUES)]})
        metas.append({"b": value, "c": MILVUS_VALUES[(5 * i + 1) % len(MILVUS_VALUES)]})
    rows = [{"id": f"r{i}", "metadata": m, "v": [1.0, 0.5]} for i, m in enumerate(metas)]
    client.insert("t", rows)
    client.load_collection("t")
    yield client, metas, MetadataColumns(metas)
    client.close()


def _milvus_ids(client, expression: str) -> set[int]:  # type: ignore[no-untyped-def]
    rows = client.query("t", filter=expression, output_fields=["id"], limit=16384)
    return {int(r["id"][1:]) for r in rows}


def _check_against_milvus(milvus, filter: dict) -> bool:  # type: ignore[no-untyped-def]
    client, metas, cols = milvus
    want = set(np.flatnonzero(filter_mask(filter, cols)).tolist())
    expression, exact = milvus_expression(filter)
    if expression is None:
        assert want == set(), filter
        return exact
    got = _milvus_ids(client, expression) if expression else set(range(len(metas)))
    if exact:
        assert got == want, (filter, expression, sorted(got ^ want))
    else:
        assert got >= want, (filter, expression, sorted(want - got))
        assert {i for i in got if matches(filter, metas[i])} == want  # the store's post-check
    return exact


CURATED = [
    *({"a": v} for v in MILVUS_VALUES if not isinstance(v, (list, dict))),
    *({"a": {"$ne": v}} for v in MILVUS_VALUES if not isinstance(v, (list, dict))),
    *({"b": {op: x}} for op in ("$gt", "$gte", "$lt", "$lte") for x in (-1, 0, 0.5, 1, 1.5, 2**53, 2.0**53, 2**63 - 1)),
    {"a": {"$in": [1, "1", None, "a"]}},
    {"a": {"$nin": [1, "1", None, "a"]}},
    {"a": {"$nin": ["a", 'q"uote', 2]}},
    {"a": {"$in": []}},
    {"a": {"$nin": []}},
    {"a": {"$gt": 0}, "c": {"$ne": None}},
    {"$or": [{"a": True}, {"b": "a"}, {"c": {"$lt": 0}}]},
    {"$or": [{"a": {"$ne": 1}}, {"b": "a"}]},
    {"$and": [{"$or": [{"a": None}, {"b": None}]}, {"c": {"$nin": [None, "😀"]}}]},
]


def test_milvus_matches_filter_mask_on_curated_filters(milvus) -> None:  # type: ignore[no-untyped-def]
    exact = [_check_against_milvus(milvus, f) for f in CURATED]
    assert sum(exact) >= len(CURATED) // 2  # type-exact wherever Milvus can be
    # every string, None, and number other than 0 / 1 is exact
    for v in MILVUS_VALUES:
        if isinstance(v, (str, type(None))) or (type(v) in (int, float) and v not in (0, 1)):
            assert milvus_expression({"a": v}).exact and milvus_expression({"a": {"$ne": v}}).exact, v


def test_milvus_bool_versus_one_is_a_superset_that_the_post_check_fixes(milvus) -> None:  # type: ignore[no-untyped-def]
    client, metas, _ = milvus
    expression, exact = milvus_expression({"a": True})
    assert not exact
    got = _milvus_ids(client, expression)  # type: ignore[arg-type]
    assert {type(metas[i]["a"]).__name__ for i in got} == {"bool", "int", "float"}  # Milvus: true == 1 == 1.0
    assert [metas[i]["a"] for i in got if matches({"a": True}, metas[i])] == [True]


def test_milvus_search_accepts_the_expressions(milvus) -> None:  # type: ignore[no-untyped-def]
    client, _, cols = milvus
    filter = {"a": {"$in": ["a", "ä", None]}, "b": {"$ne": "a"}}
    expression, exact = milvus_expression(filter)
    assert exact
    hits = client.search("t", data=[[1.0, 0.0]], anns_field="v", limit=100, filter=expression, output_fields=["id"])
    assert {int(h["id"][1:]) for h in hits[0]} == set(np.flatnonzero(filter_mask(filter, cols)).tolist())


JSON_OPERAND = st.one_of(
    st.sampled_from([v for v in MILVUS_VALUES if not isinstance(v, (list, dict))]), st.integers(-3, 3)
)
JSON_LEAF = st.one_of(
    st.builds(lambda k, v: {k: v}, KEYS, JSON_OPERAND),
    st.builds(lambda k, op, v: {k: {op: v}}, KEYS, st.sampled_from(["$eq", "$ne"]), JSON_OPERAND),
    st.builds(
        lambda k, op, vs: {k: {op: vs}}, KEYS, st.sampled_from(["$in", "$nin"]), st.lists(JSON_OPERAND, max_size=4)
    ),
    st.builds(
        lambda k, op, v: {k: {op: v}},
        KEYS,
        st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
        st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 2.5, 2**53, 2.0**53])),
    ),
)
JSON_FILTERS = st.recursive(
    JSON_LEAF,
    lambda inner: st.builds(
        lambda op, fs: {op: fs}, st.sampled_from(["$and", "$or"]), st.lists(inner, min_size=1, max_size=3)
    ),
    max_leaves=6,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filter=JSON_FILTERS)
def test_milvus_matches_filter_mask_on_random_filters(milvus, filter: dict) -> None:  # type: ignore[no-untyped-def]
    _check_against_milvus(milvus, filter)


# ------------------------------------------------------------------ LlamaIndex mapping


def test_llama_index_mapping() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.vector_stores import (
        ExactMatchFilter,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
    )

    from m3_rag.integrations.llama_index import filters as li

    ops = {op: li.OPERATORS[op] for op in li.OPERATORS}
    assert set(ops.values()) == {"$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte"}
    for op, core in ops.items():
        value = [1, 2] if core in ("$in", "$nin") else 3
        assert li.to_core_filter(MetadataFilters(filters=[MetadataFilter(key="k", value=value, operator=op)])) == {
            "k": {core: value}
        }
    nested = MetadataFilters(
        condition=FilterCondition.OR,
        filters=[
            ExactMatchFilter(key="lang", value="de"),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="year", value=2020, operator=FilterOperator.GTE),
                    MetadataFilter(key="tag", value=["x", "y"], operator=FilterOperator.NIN),
                ]
            ),
            MetadataFilters(filters=[]),  # an empty AND group: no condition
        ],
    )
    core = li.to_core_filter(nested)
    assert core == {
        "$or": [{"lang": {"$eq": "de"}}, {"$and": [{"year": {"$gte": 2020}}, {"tag": {"$nin": ["x", "y"]}}]}]
    }
    records = [{"lang": "de"}, {"year": 2021, "tag": "z"}, {"year": 2021, "tag": "x"}, {"year": 2019}, {}]
    assert [matches(core, r) for r in records] == [True, True, False, False, False]
    assert li.to_core_filter(None) == {} and li.to_core_filter(MetadataFilters(filters=[])) == {}
    assert li.to_core_filter(MetadataFilters(filters=[MetadataFilter(key="k", value=None)])) == {"k": {"$eq": None}}

    unsupported = [o for o in FilterOperator if o not in li.OPERATORS]
    expected = {"ANY", "ALL", "TEXT_MATCH", "TEXT_MATCH_INSENSITIVE", "CONTAINS", "IS_EMPTY"}
    assert {o.name for o in unsupported} >= expected
    for op in unsupported:
        bad = MetadataFilters(filters=[MetadataFilter(key="k", value="v", operator=op)])
        with pytest.raises(FilterError, match=rf"FilterOperator\.{op.name} .* is not supported"):
            li.to_core_filter(bad)
    with pytest.raises(FilterError, match=r"FilterCondition\.NOT is not supported"):
        li.to_core_filter(MetadataFilters(condition=FilterCondition.NOT, filters=[MetadataFilter(key="k", value=1)]))
    with pytest.raises(FilterError, match="OR MetadataFilters group with no filters matches nothing"):
        li.to_core_filter(MetadataFilters(condition=FilterCondition.OR, filters=[]))
    with pytest.raises(FilterError, match="takes a list of values"):
        li.to_core_filter(MetadataFilters(filters=[MetadataFilter(key="k", value=1, operator=FilterOperator.IN)]))
    with pytest.raises(FilterError, match="filter key 'a b' is not allowed"):
        li.to_core_filter(MetadataFilters(filters=[MetadataFilter(key="a b", value=1)]))
    with pytest.raises(FilterError, match=r"\$gt compares numbers"):
        li.to_core_filter(MetadataFilters(filters=[MetadataFilter(key="k", value="a", operator=FilterOperator.GT)]))
    with pytest.raises(TypeError, match="MetadataFilters or None, got dict"):
        li.to_core_filter({"k": 1})  # type: ignore[arg-type]
    failures, _ = doctest.testmod(li, optionflags=doctest.ELLIPSIS)
    assert failures == 0


# ------------------------------------------------------------------ the user-facing page stays true


def test_docs_semantics_table_is_what_the_code_does() -> None:
    import ast
    import json
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "FILTERS.md").read_text(encoding="utf-8")
    table = text[text.index("| filter | `True`") :].split("\n\n")[0].splitlines()
    header, lines = table[0], table[2:]
    names = [c.strip().strip("`") for c in header.strip("|").split("|")[1:-1]]
    stored = {"missing": {}, **{n: {"v": ast.literal_eval(n)} for n in names if n != "missing"}}
    assert len(lines) >= 10
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        filter = json.loads(cells[0].strip("`").replace("True", "true").replace("None", "null"))
        filter = parse_filter(to_dict(parse_filter(filter)))  # JSON true / null -> True / None
        assert cells[1:-1] == ["✔" if matches(filter, stored[n]) else "·" for n in names], line
        assert cells[-1] == ("yes" if milvus_expression(filter).exact else "no"), line
    for message in ("filter on 'year': $gt compares numbers", "unknown operator '$regex'; expected one of"):
        assert message in text
    with pytest.raises(FilterError, match=r"unknown operator '\$regex'; expected one of \$eq, \$ne, \$gt"):
        parse_filter({"lang": {"$regex": "d.*"}})
