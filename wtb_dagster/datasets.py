"""Test-case datasets: JSONL or CSV files of cases with an id, an input state and gold output."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wtb_dagster.errors import DatasetError


@dataclass(frozen=True)
class TestCase:
    """One test case: the input state of a thread, and what a good final state holds."""

    __test__ = False  # not a pytest class

    id: str
    input: dict[str, Any]
    expected: Any = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input": self.input,
            "expected": self.expected,
            "tags": list(self.tags),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestCase:
        return cls(
            id=str(data["id"]),
            input=dict(data["input"]),
            expected=data.get("expected"),
            tags=tuple(data.get("tags") or ()),
        )


def _case_from_record(record: Any, where: str) -> TestCase:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object with 'id' and 'input', got {record!r:.80}")
    missing = [key for key in ("id", "input") if key not in record]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(record) - {"id", "input", "expected", "tags"})
    if unknown:
        raise DatasetError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: id, input, expected, tags"
        )
    if not isinstance(record["input"], dict):
        raise DatasetError(f"{where}: 'input' must be an object (the thread's input state)")
    case_id = str(record["id"]).strip()
    if not case_id:
        raise DatasetError(f"{where}: 'id' is empty")
    tags = record.get("tags") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(";") if t.strip()]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DatasetError(f"{where}: 'tags' must be a list of strings")
    return TestCase(
        id=case_id, input=record["input"], expected=record.get("expected"), tags=tuple(tags)
    )


def _jsonl_records(path: Path) -> Iterable[tuple[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None


def _csv_json_cell(value: str, column: str, where: str) -> Any:
    if value == "":
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        if column == "expected":
            return value  # a bare string is a fine expected answer
        raise DatasetError(
            f"{where}: column '{column}' must hold JSON, got {value!r:.60}"
        ) from None


def _csv_records(path: Path) -> Iterable[tuple[str, Any]]:
    # utf-8-sig: spreadsheet programs start their UTF-8 CSV files with a byte-order mark
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id", "input"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}:1: the header must name at least the columns id and input")
        unknown = sorted(set(reader.fieldnames) - {"id", "input", "expected", "tags"})
        if unknown:
            raise DatasetError(
                f"{path}:1: unknown column(s) {', '.join(unknown)}; "
                "allowed: id, input, expected, tags"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:  # DictReader keeps cells beyond the header under the key None
                raise DatasetError(
                    f"{where}: more cells than header columns (quote cells that hold commas)"
                )
            record: dict[str, Any] = {"id": row["id"]}
            for column in ("input", "expected"):
                if column in row:
                    record[column] = _csv_json_cell(row[column] or "", column, where)
            if row.get("tags"):
                record["tags"] = row["tags"]
            yield where, record


def load_cases(path: str | Path) -> list[TestCase]:
    """Read a dataset of test cases from a `.jsonl` or `.csv` file.

    Every error names the file and line. Ids must be unique.

    >>> cases = load_cases("wtb_dagster/demo/data/cases.jsonl")
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = _jsonl_records(path)
    elif suffix == ".csv":
        records = _csv_records(path)
    else:
        raise DatasetError(
            f"dataset file {path}: unsupported format '{suffix}'; use .jsonl or .csv"
        )
    cases: list[TestCase] = []
    seen: dict[str, str] = {}
    for where, record in records:
        case = _case_from_record(record, where)
        if case.id in seen:
            raise DatasetError(f"{where}: duplicate case id '{case.id}' (first at {seen[case.id]})")
        seen[case.id] = where
        cases.append(case)
    if not cases:
        raise DatasetError(f"dataset file {path} holds no test case")
    return cases


def select_cases(cases: list[TestCase], ids: Iterable[str] | None = None) -> list[TestCase]:
    """The cases with the given ids (all when `ids` is None); an unknown id is an error."""
    if ids is None:
        return list(cases)
    wanted = list(ids)
    by_id = {case.id: case for case in cases}
    unknown = [case_id for case_id in wanted if case_id not in by_id]
    if unknown:
        raise DatasetError(
            f"unknown case id(s) {', '.join(unknown)}; the dataset has {len(cases)} cases "
            f"(e.g. {', '.join(list(by_id)[:5])})"
        )
    return [by_id[case_id] for case_id in wanted]
