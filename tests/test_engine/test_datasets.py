"""Test-case datasets: JSONL and CSV loading, and errors that name the file and line."""

from __future__ import annotations

import pytest

from wtb_dagster.datasets import TestCase, load_cases, select_cases
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
    with pytest.raises(DatasetError, match=r"cases\.jsonl:1: missing field\(s\) id, input"):
        load_cases(path)


def test_unknown_fields_are_named_with_the_allowed_ones(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "a", "input": {}, "expeted": 1, "zz": 2}\n')
    with pytest.raises(DatasetError) as info:
        load_cases(path)
    assert ":1: unknown field(s) expeted, zz" in str(info.value)
    assert "allowed: id, input, expected, tags" in str(info.value)


def test_input_that_is_not_an_object_is_rejected(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "a", "input": "just text"}\n')
    with pytest.raises(DatasetError, match="'input' must be an object"):
        load_cases(path)


def test_blank_id_is_rejected(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "  ", "input": {}}\n')
    with pytest.raises(DatasetError, match=r":1: 'id' is empty"):
        load_cases(path)


def test_tags_that_are_not_strings_are_rejected(tmp_path):
    path = write(tmp_path, "cases.jsonl", '{"id": "a", "input": {}, "tags": [1, 2]}\n')
    with pytest.raises(DatasetError, match="'tags' must be a list of strings"):
        load_cases(path)


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
