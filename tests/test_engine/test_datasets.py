"""Test-case datasets: JSONL and CSV loading, and errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wtb_dagster.datasets import CASE_ID_PATTERN, TestCase, load_cases, select_cases
from wtb_dagster.errors import DatasetError


def write(tmp_path, name: str, text: str, encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


# -- JSONL ---------------------------------------------------------------------------------------


def test_jsonl_cases_load_with_input_expected_and_tags(tmp_path):
    path = write(
        tmp_path,
        "cases.jsonl",
        '{"id": "q1", "input": {"question": "capital of France?"}, '
        '"expected": {"answer": "Paris"}, "tags": ["geo", "easy"]}\n'
        "\n"  # blank lines are skipped
        '{"id": 2, "input": {"question": "2+2"}, "expected": "4"}\n',
    )
    cases = load_cases(path)
    assert cases == [
        TestCase(
            id="q1",
            input={"question": "capital of France?"},
            expected={"answer": "Paris"},
            tags=("geo", "easy"),
        ),
        TestCase(id="2", input={"question": "2+2"}, expected="4", tags=()),
    ]


def test_ndjson_extension_is_read_as_jsonl(tmp_path):
    path = write(tmp_path, "cases.NDJSON", '{"id": "a", "input": {}}\n')
    assert [c.id for c in load_cases(str(path))] == ["a"]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write(
        tmp_path,
        "cases.jsonl",
        '{"id": "a", "input": {}}\n\n{"id": "b", "input": {\n{"id": "c", "input": {}}\n',
    )
    with pytest.raises(DatasetError) as info:
        load_cases(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: not valid JSON")
    assert "column" in message


def test_json_line_that_is_not_an_object_is_rejected_with_its_line(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "a", "input": {}}\n[1, 2]\n')
    with pytest.raises(DatasetError, match=r"cases\.jsonl:2: expected an object"):
        load_cases(path)


def test_missing_fields_are_named(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"expected": "x"}\n')
    with pytest.raises(
        DatasetError,
        match=r"cases\.jsonl:1: 'id' \(the case id\) is required; "
        r"'input' \(the thread's input state\) is required",
    ):
        load_cases(path)


def test_unknown_fields_are_named_with_the_allowed_ones(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "a", "input": {}, "expeted": 1, "zz": 2}\n')
    with pytest.raises(DatasetError) as info:
        load_cases(path)
    assert str(info.value) == (
        f"{path}:1: unknown fields 'expeted', 'zz'; allowed: id, input, expected, tags"
    )


def test_input_that_is_not_an_object_is_rejected(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "a", "input": "just text"}\n')
    with pytest.raises(DatasetError, match="'input' must be an object"):
        load_cases(path)


def test_blank_id_is_rejected(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "  ", "input": {}}\n')
    with pytest.raises(DatasetError, match=r":1: 'id' is empty"):
        load_cases(path)


ALPHABET = "ids use letters, digits and . _ - : only"


@pytest.mark.parametrize(
    ("bad_id", "problem"),
    [
        ("a/b", "has '/'"),  # would be read as a thread path workflow/combo/case
        ("a@fork-1", "has '@'"),  # would be read as a fork's lineage
        ("a b", "has ' '"),
        ("q+1=2", "has '+', '='"),
        ("_hidden", "starts with '_'"),
        ("x" * 201, "is 201 characters long"),
    ],
)
def test_jsonl_case_id_outside_the_alphabet_names_file_line_id_and_alphabet(
    tmp_path, bad_id, problem
):
    path = write(
        tmp_path,
        "cases.jsonl",
        '{"id": "ok", "input": {}}\n\n' + json.dumps({"id": bad_id, "input": {}}) + "\n",
    )
    with pytest.raises(DatasetError) as info:
        load_cases(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: case id '{bad_id[:60]}")
    assert f" {problem}; {ALPHABET}" in message


def test_csv_case_id_outside_the_alphabet_names_file_and_line(tmp_path):
    path = write(tmp_path, "cases.csv", 'id,input\nq1,"{}"\nq/2,"{}"\n')
    with pytest.raises(DatasetError) as info:
        load_cases(path)
    assert str(info.value).startswith(f"{path}:3: case id 'q/2' has '/'; {ALPHABET}")


def test_every_allowed_character_loads_from_jsonl_and_csv(tmp_path):
    ids = ["A-z_0.9:x", "7", "docs-001", "x" * 200]
    jsonl = write(
        tmp_path, "cases.jsonl", "".join(json.dumps({"id": i, "input": {}}) + "\n" for i in ids)
    )
    csv_file = write(tmp_path, "cases.csv", "id,input\n" + "".join(f'{i},"{{}}"\n' for i in ids))
    assert [c.id for c in load_cases(jsonl)] == ids
    assert [c.id for c in load_cases(csv_file)] == ids


def test_the_shipped_demo_dataset_fits_the_alphabet():
    cases = load_cases(Path(__file__).parents[2] / "wtb_dagster/demo/data/cases.jsonl")
    assert cases and all(CASE_ID_PATTERN.fullmatch(c.id) for c in cases)


def test_in_memory_test_case_with_a_bad_id_is_rejected_when_made():
    with pytest.raises(DatasetError, match=f"case id 'c/1' has '/'; {ALPHABET}"):
        TestCase(id="c/1", input={})
    with pytest.raises(DatasetError, match="case id 'c@1' has '@'"):
        TestCase.from_dict({"id": "c@1", "input": {}})
    assert TestCase(id="c:1", input={}).id == "c:1"


def test_tags_that_are_not_strings_are_rejected(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "a", "input": {}, "tags": [1, 2]}\n')
    with pytest.raises(
        DatasetError, match=r":1: tags\[0\]: expected a string, got 1; tags\[1\]: expected a string"
    ):
        load_cases(path)


def test_misspelt_field_names_file_line_and_the_field_it_should_be(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "a", "input": {}}\n{"id": "b", "inptu": {}}\n')
    with pytest.raises(DatasetError) as info:
        load_cases(path)
    assert str(info.value) == (
        f"{path}:2: unknown field 'inptu' (did you mean 'input'?); "
        "allowed: id, input, expected, tags"
    )


@pytest.mark.parametrize("bad", ["null", "true", '["a"]', '{"x": 1}'])
def test_id_that_is_not_text_or_a_number_is_rejected_not_turned_into_text(tmp_path, bad):
    # `"id": null` used to become the case "None"
    path = write(tmp_path, "cases.jsonl", f'{{"id": {bad}, "input": {{}}}}\n')
    with pytest.raises(
        DatasetError, match=r"cases\.jsonl:1: 'id' must be a string \(the case id\)"
    ):
        load_cases(path)


def test_row_errors_read_as_one_line_without_a_pydantic_dump(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "a", "input": [], "tags": "x", "zz": 1}\n')
    with pytest.raises(DatasetError) as info:
        load_cases(path)
    message = str(info.value)
    assert message == (
        f"{path}:1: unknown field 'zz'; allowed: id, input, expected, tags; "
        "'input' must be an object (the thread's input state), got []"
    )
    for pydantic_words in ("validation error", "pydantic.dev", "Input should", "Field required"):
        assert pydantic_words not in message


def test_duplicate_id_names_both_lines(tmp_path):
    path = write(
        tmp_path,
        "cases.jsonl",
        '{"id": "a", "input": {}}\n{"id": "b", "input": {}}\n{"id": "a", "input": {"x": 1}}\n',
    )
    with pytest.raises(DatasetError) as info:
        load_cases(path)
    assert str(info.value) == f"{path}:3: duplicate case id 'a' (first at {path}:1)"


def test_empty_file_is_an_error(tmp_path):
    path = write(tmp_path, "cases.jsonl", "\n\n")
    with pytest.raises(DatasetError, match="holds no test case"):
        load_cases(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_cases(tmp_path / "nope.jsonl")


def test_unsupported_extension_is_an_error_naming_the_supported_ones(tmp_path):
    path = write(tmp_path, "cases.json", '[{"id": "a", "input": {}}]')
    with pytest.raises(DatasetError, match=r"unsupported format '\.json'; use \.jsonl or \.csv"):
        load_cases(path)


# -- CSV -----------------------------------------------------------------------------------------


def test_csv_input_is_json_expected_may_be_bare_text_and_tags_split_on_semicolons(tmp_path):
    path = write(
        tmp_path,
        "cases.csv",
        "id,input,expected,tags\n"
        'q1,"{""question"": ""capital?"", ""k"": 3}","{""answer"": ""Paris""}",geo; easy ;\n'
        'q2,"{""question"": ""2+2""}",four,\n'
        'q3,"{}",,\n',
    )
    cases = load_cases(path)
    assert cases[0] == TestCase(
        id="q1",
        input={"question": "capital?", "k": 3},
        expected={"answer": "Paris"},
        tags=("geo", "easy"),
    )
    assert cases[1].expected == "four" and cases[1].tags == ()
    assert cases[2].input == {} and cases[2].expected is None


def test_csv_input_that_is_not_json_names_the_line_and_column(tmp_path):
    path = write(tmp_path, "cases.csv", 'id,input\nq1,"{}"\nq2,question?\n')
    with pytest.raises(DatasetError) as info:
        load_cases(path)
    assert f"{path}:3: column 'input' must hold JSON" in str(info.value)


def test_csv_empty_input_is_rejected(tmp_path):
    path = write(tmp_path, "cases.csv", "id,input\nq1,\n")
    with pytest.raises(DatasetError, match=r":2: 'input' must be an object"):
        load_cases(path)


def test_csv_without_the_required_columns_is_rejected(tmp_path):
    path = write(tmp_path, "cases.csv", "id,question\nq1,hello\n")
    with pytest.raises(DatasetError, match=r"cases\.csv:1: the header must name at least"):
        load_cases(path)


def test_csv_unknown_column_is_rejected_like_an_unknown_jsonl_field(tmp_path):
    path = write(tmp_path, "cases.csv", 'id,input,expcted\nq1,"{}",Paris\n')
    with pytest.raises(DatasetError, match=r"cases\.csv:1: unknown column\(s\) expcted"):
        load_cases(path)


def test_csv_row_with_more_cells_than_the_header_is_rejected(tmp_path):
    # an unquoted comma in the expected answer would otherwise silently lose ", France"
    path = write(
        tmp_path, "cases.csv", 'id,input,expected\nq1,"{}","Paris"\nq2,"{}",Paris, France\n'
    )
    with pytest.raises(DatasetError, match=r"cases\.csv:3: more cells than header columns"):
        load_cases(path)


def test_csv_written_with_a_byte_order_mark_loads(tmp_path):
    path = write(tmp_path, "cases.csv", 'id,input\nq1,"{""x"": 1}"\n', encoding="utf-8-sig")
    assert load_cases(path) == [TestCase(id="q1", input={"x": 1})]


def test_csv_duplicate_id_names_both_lines(tmp_path):
    path = write(tmp_path, "cases.csv", 'id,input\nq1,"{}"\nq2,"{}"\nq1,"{}"\n')
    with pytest.raises(
        DatasetError, match=r"cases\.csv:4: duplicate case id 'q1' \(first at .*:2\)"
    ):
        load_cases(path)


def test_csv_with_only_a_header_is_an_error(tmp_path):
    path = write(tmp_path, "cases.csv", "id,input\n")
    with pytest.raises(DatasetError, match="holds no test case"):
        load_cases(path)


# -- TestCase and select_cases -------------------------------------------------------------------


def test_test_case_round_trips_through_a_dict():
    case = TestCase(id="a", input={"x": 1}, expected={"answer": "2"}, tags=("t",))
    assert case.to_dict() == {
        "id": "a",
        "input": {"x": 1},
        "expected": {"answer": "2"},
        "tags": ["t"],
    }
    assert TestCase.from_dict(case.to_dict()) == case


CASES = [TestCase(id=f"c{i}", input={"x": i}) for i in range(7)]


def test_select_cases_returns_all_for_none_and_the_named_ones_in_the_asked_order():
    assert select_cases(CASES) == CASES
    assert [c.id for c in select_cases(CASES, ["c3", "c0"])] == ["c3", "c0"]


def test_select_cases_unknown_ids_are_named_with_examples_of_known_ones():
    with pytest.raises(DatasetError) as info:
        select_cases(CASES, ["c1", "zz", "yy"])
    message = str(info.value)
    assert "unknown case id(s) zz, yy" in message
    assert "the dataset has 7 cases (e.g. c0, c1, c2, c3, c4)" in message
