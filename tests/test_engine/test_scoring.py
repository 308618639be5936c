"""Scorers: each built-in on hand-computed values, user scorers, and a scorer that raises."""

from __future__ import annotations

import pytest

from tests import toy_graphs
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError
from wtb_dagster.scoring import (
    builtin,
    contains,
    exact_match,
    json_field_match,
    latency,
    numeric_tolerance,
    score_state,
    token_f1,
)


def case(expected) -> TestCase:
    return TestCase(id="k", input={}, expected=expected)


# -- exact_match ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "got", "score"),
    [
        ("Paris", "Paris", 1.0),
        ("Paris", "  paris. ", 1.0),  # trimmed, lower-cased, final dot dropped
        ("New  York", "new york", 1.0),  # inner whitespace collapsed
        ("Paris", "Paris, France", 0.0),
        ("Paris", None, 0.0),
        (None, "Paris", 0.0),
    ],
)
def test_exact_match_normalises_case_space_and_final_dot(gold, got, score):
    state = {} if got is None else {"answer": got}
    assert exact_match()(case({"answer": gold}), state) == {"exact_match": score}


def test_exact_match_with_a_scalar_expected_and_a_dotted_field():
    scorer = exact_match(field="result.city", name="city")
    assert scorer(case("Paris"), {"result": {"city": "paris"}}) == {"city": 1.0}
    assert scorer(case({"result": {"city": "Rome"}}), {"result": {"city": "paris"}}) == {
        "city": 0.0
    }


# -- contains ------------------------------------------------------------------------------------


def test_contains_finds_the_gold_text_inside_the_answer_case_insensitively():
    scorer = contains()
    assert scorer(case({"answer": "Paris"}), {"answer": "It is PARIS, in France."}) == {
        "contains": 1.0
    }
    assert scorer(case({"answer": "Rome"}), {"answer": "It is Paris."}) == {"contains": 0.0}
    assert scorer(case({"answer": "Rome"}), {}) == {"contains": 0.0}
    assert scorer(case(None), {"answer": "Rome"}) == {"contains": 0.0}


# -- numeric_tolerance ---------------------------------------------------------------------------


def test_numeric_tolerance_absolute():
    gold = case({"answer": "3.14"})
    assert numeric_tolerance(tolerance=0.01)(gold, {"answer": "pi is about 3.1415"}) == {
        "numeric": 1.0
    }
    assert numeric_tolerance(tolerance=1e-4)(gold, {"answer": "pi is about 3.1415"}) == {
        "numeric": 0.0
    }


def test_numeric_tolerance_relative_scales_with_the_gold_value():
    gold = case({"answer": 100})
    assert numeric_tolerance(tolerance=0.05, relative=True)(gold, {"answer": 104}) == {
        "numeric": 1.0
    }
    assert numeric_tolerance(tolerance=0.03, relative=True)(gold, {"answer": 104}) == {
        "numeric": 0.0
    }


def test_numeric_tolerance_reads_thousands_separators_negatives_and_missing_numbers():
    scorer = numeric_tolerance(name="n")
    assert scorer(case("1234"), {"answer": "total: 1,234 items"}) == {"n": 1.0}
    assert scorer(case(-2.5), {"answer": "it fell by -2.5"}) == {"n": 1.0}
    assert scorer(case("12"), {"answer": "no digits here"}) == {"n": 0.0}
    assert scorer(case(None), {"answer": "12"}) == {"n": 0.0}


# -- token_f1 ------------------------------------------------------------------------------------


def test_token_f1_on_a_hand_computed_overlap():
    # gold: the cat sat (3 tokens); got: the cat ran away (4 tokens); common 2
    # precision 2/4, recall 2/3, F1 = 2 * (1/2) * (2/3) / (1/2 + 2/3) = 4/7
    score = token_f1()(case({"answer": "The cat sat."}), {"answer": "the cat ran away"})
    assert score == {"token_f1": pytest.approx(4 / 7)}


def test_token_f1_counts_repeated_tokens_once_per_occurrence():
    # gold: a a b; got: a a a; common = min(2,3) of a = 2; P 2/3, R 2/3, F1 2/3
    score = token_f1()(case({"answer": "a a b"}), {"answer": "a a a"})
    assert score == {"token_f1": pytest.approx(2 / 3)}


def test_token_f1_edge_cases():
    scorer = token_f1(name="f1")
    assert scorer(case({"answer": "3.14 meters"}), {"answer": "3.14 meters"}) == {"f1": 1.0}
    assert scorer(case({"answer": "alpha"}), {"answer": "beta"}) == {"f1": 0.0}
    assert scorer(case({"answer": "alpha"}), {}) == {"f1": 0.0}
    assert scorer(case({"answer": ""}), {"answer": ""}) == {"f1": 1.0}


# -- json_field_match ----------------------------------------------------------------------------


def test_json_field_match_is_the_share_of_equal_fields():
    scorer = json_field_match(["a.b", "c", "d.0"])
    gold = case({"a": {"b": 1}, "c": [1, 2], "d": ["x", "y"]})
    state = {"a": {"b": 1}, "c": [2, 1], "d": ["x"]}
    assert scorer(gold, state) == {"json_fields": pytest.approx(2 / 3)}


def test_json_field_match_compares_objects_regardless_of_key_order():
    scorer = json_field_match(["obj"], name="obj_ok")
    gold = case({"obj": {"x": 1, "y": [1, {"z": 2}]}})
    assert scorer(gold, {"obj": {"y": [1, {"z": 2}], "x": 1}}) == {"obj_ok": 1.0}
    assert scorer(gold, {"obj": {"y": [1, {"z": 3}], "x": 1}}) == {"obj_ok": 0.0}


def test_json_field_match_needs_a_field():
    with pytest.raises(ConfigError, match="at least one field"):
        json_field_match([])


# -- latency -------------------------------------------------------------------------------------


def test_latency_scorer_reads_the_thread_latency_given_to_score_state():
    scorers = [latency(budget_s=1.5)]
    assert score_state(case(None), {}, scorers, latency_s=1.5) == ({"within_latency": 1.0}, {})
    assert score_state(case(None), {}, scorers, latency_s=2.0) == ({"within_latency": 0.0}, {})
    assert score_state(case(None), {}, scorers, latency_s=None) == ({"within_latency": 0.0}, {})


def test_score_state_does_not_leak_the_latency_key_into_the_callers_state():
    state = {"answer": "1"}
    score_state(case(None), state, [latency()], latency_s=0.1)
    assert state == {"answer": "1"}


# -- score_state ---------------------------------------------------------------------------------


def test_raising_scorer_is_recorded_and_the_others_still_score():
    gold = case({"answer": "1012"})
    metrics, errors = score_state(
        gold,
        {"answer": "1012"},
        [exact_match(), toy_graphs.broken_scorer, toy_graphs.answer_scorer],
    )
    assert metrics == {"exact_match": 1.0, "right_answer": 1.0}
    assert errors == {"broken_scorer": "RuntimeError: scorer bug"}


def test_user_scorer_returning_a_float_is_named_after_the_function():
    def politeness(case, state) -> float:
        return 0.25

    metrics, errors = score_state(case(None), {}, [politeness])
    assert metrics == {"politeness": 0.25} and errors == {}


def test_user_scorer_returning_several_metrics_keeps_them_all_as_floats():
    def two(case, state):
        return {"m1": 1, "m2": True}

    metrics, _ = score_state(case(None), {}, [two])
    assert metrics == {"m1": 1.0, "m2": 1.0}
    assert all(type(v) is float for v in metrics.values())


def test_scorer_returning_a_non_number_is_an_error_of_that_scorer():
    def bad(case, state):
        return {"m": "high"}

    metrics, errors = score_state(case(None), {}, [bad, latency()], latency_s=0.0)
    assert metrics == {"within_latency": 1.0}
    assert errors["bad"].startswith("ValueError")


# -- builtin -------------------------------------------------------------------------------------


def test_builtin_returns_a_configured_scorer_named_after_its_metric():
    scorer = builtin("token_f1", field="text", name="f1_text")
    assert scorer.__name__ == "f1_text"
    assert scorer(case({"text": "a b"}), {"text": "a b"}) == {"f1_text": 1.0}


def test_builtin_accepts_the_name_option_of_every_builtin():
    # `name` is both builtin()'s first argument and every scorer's metric-name option
    assert builtin("exact_match", name="em").__name__ == "em"
    assert builtin("json_field_match", fields=["a"], name="jf").__name__ == "jf"


def test_builtin_unknown_name_lists_the_builtins():
    with pytest.raises(ConfigError) as info:
        builtin("bleu")
    assert "unknown built-in scorer 'bleu'" in str(info.value)
    assert "exact_match, contains, numeric_tolerance, token_f1, json_field_match, latency" in str(
        info.value
    )


def test_builtin_bad_options_are_a_config_error():
    with pytest.raises(ConfigError, match="scorer 'exact_match': bad options"):
        builtin("exact_match", feild="answer")
    with pytest.raises(ConfigError, match="scorer 'json_field_match': bad options"):
        builtin("json_field_match")
