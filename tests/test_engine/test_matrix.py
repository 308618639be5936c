"""Combos and the variant matrix: canonical keys, parse errors, product, explicit lists, filters."""

from __future__ import annotations

import pytest

from wtb_dagster.errors import VariantError
from wtb_dagster.matrix import BASELINE, Combo, build_matrix, cartesian

VARIANTS = {"retrieve": ["bm25", "dense"], "generate": ["template", "llm", "extractive"]}


def keys(combos: list[Combo]) -> list[str]:
    return [c.key for c in combos]


# -- Combo ---------------------------------------------------------------------------------------


def test_combo_key_is_sorted_by_node_and_joined_with_plus():
    assert Combo.parse("retrieve=bm25+generate=template").key == "generate=template+retrieve=bm25"
    assert Combo.of({"z": "1", "a": "2", "m": "3"}).key == "a=2+m=3+z=1"


def test_combo_parse_is_order_insensitive_and_round_trips():
    one = Combo.parse("retrieve=bm25+generate=template")
    other = Combo.parse("generate=template+retrieve=bm25")
    assert one == other and hash(one) == hash(other)
    assert Combo.parse(one.key) == one
    assert str(one) == one.key


def test_baseline_picks_are_omitted_from_the_key():
    combo = Combo.parse("retrieve=baseline+generate=llm")
    assert combo.key == "generate=llm"
    assert combo.picks == (("generate", "llm"),)
    assert Combo.of({"retrieve": BASELINE}).key == BASELINE


@pytest.mark.parametrize("key", ["baseline", "", "  ", " baseline ", "retrieve=baseline"])
def test_empty_and_baseline_keys_are_the_baseline_combo(key):
    combo = Combo.parse(key)
    assert combo == Combo()
    assert combo.key == "baseline"
    assert combo.variant_for("retrieve") == BASELINE


def test_variant_for_names_the_pick_or_baseline():
    combo = Combo.parse("retrieve=bm25")
    assert combo.variant_for("retrieve") == "bm25"
    assert combo.variant_for("generate") == BASELINE


def test_with_pick_replaces_one_node_and_keeps_the_key_canonical():
    combo = Combo.parse("retrieve=bm25")
    assert combo.with_pick("generate", "llm").key == "generate=llm+retrieve=bm25"
    assert combo.with_pick("retrieve", "dense").key == "retrieve=dense"
    assert combo.with_pick("retrieve", BASELINE).key == BASELINE


def test_contains_is_a_subset_test_on_picks():
    big = Combo.parse("generate=llm+retrieve=bm25")
    assert big.contains(Combo.parse("retrieve=bm25"))
    assert big.contains(Combo())
    assert not big.contains(Combo.parse("retrieve=dense"))
    assert not Combo.parse("retrieve=bm25").contains(big)


@pytest.mark.parametrize(
    ("key", "match"),
    [
        ("retrieve", "'retrieve' is not 'node=variant'"),
        ("retrieve=", "is not 'node=variant'"),
        ("=bm25", "is not 'node=variant'"),
        ("retrieve=bm25+", "'' is not 'node=variant'"),
        ("retrieve=bm25,generate=llm", "may only hold letters"),
        ("retrieve=bm25|x", "may only hold letters"),
        ("retrieve=a=b", "may only hold letters"),
        ("retrieve=bm25+retrieve=dense", "names node 'retrieve' twice"),
    ],
)
def test_malformed_combo_keys_are_variant_errors(key, match):
    with pytest.raises(VariantError, match=match):
        Combo.parse(key)


def test_parse_error_shows_how_to_join_picks():
    with pytest.raises(VariantError, match=r"join several with '\+', e.g. 'generate=template"):
        Combo.parse("retrieve=bm25+generate")


# -- cartesian product ---------------------------------------------------------------------------


def test_cartesian_product_counts_baseline_and_every_variant_per_node():
    matrix = cartesian(VARIANTS)
    assert len(matrix) == (1 + 2) * (1 + 3)
    assert len(set(matrix)) == len(matrix)
    assert matrix[0] == Combo()
    assert "generate=extractive+retrieve=dense" in keys(matrix)


def test_cartesian_of_one_node_is_baseline_plus_its_variants():
    assert keys(cartesian({"b": ["y", "x"]})) == ["baseline", "b=x", "b=y"]


def test_cartesian_of_no_varied_node_is_only_the_baseline():
    assert keys(cartesian({})) == ["baseline"]


def test_build_matrix_orders_baseline_first_then_by_size_then_key():
    matrix = keys(build_matrix(VARIANTS))
    assert matrix[0] == "baseline"
    singles = matrix[1:6]
    assert singles == sorted(singles) and all("+" not in k for k in singles)
    assert all("+" in k for k in matrix[6:])
    assert matrix[6:] == sorted(matrix[6:])


def test_matrix_is_stable_across_calls_and_input_order():
    shuffled = {"generate": ["llm", "extractive", "template"], "retrieve": ["dense", "bm25"]}
    first = keys(build_matrix(VARIANTS))
    assert keys(build_matrix(VARIANTS)) == first
    assert keys(build_matrix(shuffled)) == first


def test_every_key_is_a_valid_dagster_partition_key():
    for combo in build_matrix(VARIANTS):
        assert not set(combo.key) & set(",|[]"), combo.key
        assert combo.key.strip() == combo.key and combo.key


# -- explicit lists and filters ------------------------------------------------------------------


def test_explicit_list_is_used_canonicalised_deduplicated_and_baseline_first():
    matrix = build_matrix(
        VARIANTS,
        combos=["retrieve=bm25+generate=llm", "generate=llm+retrieve=bm25", "baseline"],
    )
    assert keys(matrix) == ["baseline", "generate=llm+retrieve=bm25"]


def test_explicit_list_without_baseline_has_no_baseline():
    assert keys(build_matrix(VARIANTS, combos=["retrieve=dense"])) == ["retrieve=dense"]


def test_explicit_combo_with_an_unknown_node_lists_the_varied_nodes():
    with pytest.raises(VariantError, match="node 'rerank' has no variants; varied nodes: generate"):
        build_matrix(VARIANTS, combos=["rerank=x"])


def test_explicit_combo_with_an_unknown_variant_lists_the_declared_ones():
    with pytest.raises(VariantError) as info:
        build_matrix(VARIANTS, combos=["retrieve=sparse"])
    assert "node 'retrieve' has no variant 'sparse'" in str(info.value)
    assert "declared: baseline, bm25, dense" in str(info.value)


def test_include_keeps_combos_containing_any_pattern():
    matrix = keys(build_matrix(VARIANTS, include=["retrieve=bm25", "generate=llm"]))
    assert all("retrieve=bm25" in k or "generate=llm" in k for k in matrix)
    # 4 with retrieve=bm25, 3 with generate=llm, 1 with both
    assert len(matrix) == 4 + 3 - 1
    assert "baseline" not in matrix


def test_include_with_two_picks_needs_both():
    matrix = keys(build_matrix(VARIANTS, include=["generate=llm+retrieve=bm25"]))
    assert matrix == ["generate=llm+retrieve=bm25"]


def test_include_baseline_matches_only_the_baseline_combo():
    matrix = keys(build_matrix(VARIANTS, include=["baseline", "retrieve=dense"]))
    assert matrix == [
        "baseline",
        "retrieve=dense",
        "generate=extractive+retrieve=dense",
        "generate=llm+retrieve=dense",
        "generate=template+retrieve=dense",
    ]


def test_exclude_drops_combos_containing_any_pattern():
    matrix = keys(build_matrix(VARIANTS, exclude=["generate=llm", "retrieve=dense"]))
    assert not any("generate=llm" in k or "retrieve=dense" in k for k in matrix)
    assert len(matrix) == 2 * 3  # retrieve in {baseline, bm25} x generate in {baseline, 2 others}
    assert matrix[0] == "baseline"


def test_exclude_baseline_drops_only_the_baseline():
    matrix = keys(build_matrix(VARIANTS, exclude=["baseline"]))
    assert "baseline" not in matrix and len(matrix) == 11


def test_exclude_applies_after_include():
    matrix = keys(
        build_matrix(VARIANTS, include=["retrieve=bm25"], exclude=["generate=llm+retrieve=bm25"])
    )
    assert matrix == [
        "retrieve=bm25",
        "generate=extractive+retrieve=bm25",
        "generate=template+retrieve=bm25",
    ]


def test_filters_also_apply_to_an_explicit_list():
    matrix = build_matrix(
        VARIANTS, combos=["baseline", "retrieve=bm25", "retrieve=dense"], exclude=["retrieve=dense"]
    )
    assert keys(matrix) == ["baseline", "retrieve=bm25"]


def test_filter_pattern_naming_an_unknown_variant_is_an_error():
    with pytest.raises(VariantError, match="no variant 'nope'"):
        build_matrix(VARIANTS, exclude=["retrieve=nope"])


def test_matrix_emptied_by_the_filters_is_an_error():
    with pytest.raises(VariantError, match="the variant matrix is empty"):
        build_matrix(VARIANTS, include=["retrieve=bm25"], exclude=["retrieve=bm25"])


def test_empty_explicit_list_is_an_error():
    with pytest.raises(VariantError, match="the variant matrix is empty"):
        build_matrix(VARIANTS, combos=[])
