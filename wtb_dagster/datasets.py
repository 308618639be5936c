"""Test-case datasets: JSONL or CSV files of cases with an id, an input state and gold output."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from wtb_dagster.config import explain
from wtb_dagster.errors import DatasetError

# A case id is part of a thread id (`workflow/combo/case_id@lineage`) and of Dagster metadata,
# so `/`, `@` and other separators cannot be in it: one alphabet, checked everywhere a case is made.
CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_CASE_ID_CHAR = re.compile(r"[A-Za-z0-9._:-]")
CASE_ID_ALPHABET = "letters, digits and . _ - : only (starting with a letter or digit, ≤ 200)"


def check_case_id(case_id: str, where: str | None = None) -> str:
    """`case_id` if it matches `CASE_ID_PATTERN`, else a `DatasetError` naming what is wrong.

    >>> check_case_id("a/b", "data/qa.jsonl:12")
    DatasetError: data/qa.jsonl:12: case id 'a/b' has '/'; ids use letters, digits and . _ - : …
    """
    if isinstance(case_id, str) and CASE_ID_PATTERN.fullmatch(case_id):
        return case_id
    text = str(case_id)
    bad = sorted({c for c in text if not _CASE_ID_CHAR.fullmatch(c)})
    if not isinstance(case_id, str):
        problem = f"is a {type(case_id).__name__}, not a string"
    elif not case_id:
        problem = "is empty"
    elif len(case_id) > 200:
        problem = f"is {len(case_id)} characters long"
    elif bad:
        problem = "has " + ", ".join(repr(c) for c in bad)
    else:
        problem = f"starts with {case_id[0]!r}"
    shown = text if len(text) <= 60 else f"{text[:60]}…"
    prefix = f"{where}: " if where else ""
    raise DatasetError(f"{prefix}case id {shown!r} {problem}; ids use {CASE_ID_ALPHABET}")


@dataclass(frozen=True)
class TestCase:
    """One test case: the input state of a thread, and what a good final state holds."""

    __test__ = False  # not a pytest class

    id: str
    input: dict[str, Any]
    expected: Any = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_case_id(self.id)

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


class CaseRecord(BaseModel):
    """The shape of one dataset line (a JSONL object or a CSV row, its cells parsed)."""

    model_config = ConfigDict(extra="forbid")

    # JSON numbers are fine as ids (`"id": 2` is case "2"); everything else must be text.
    id: str = Field(coerce_numbers_to_str=True, description="the case id")
    input: dict[str, Any] = Field(description="the thread's input state")
    expected: Any = None
    tags: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("tags", mode="before")
    @classmethod
    def _semicolon_separated(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):  # CSV cells hold `geo; easy`
            return [tag.strip() for tag in value.split(";") if tag.strip()]
        return value


_FIELDS = list(CaseRecord.model_fields)
_REQUIRED = [name for name, info in CaseRecord.model_fields.items() if info.is_required()]


def _case_from_record(record: Any, where: str) -> TestCase:
    try:
        row = CaseRecord.model_validate(record)
    except pydantic.ValidationError as exc:
        raise DatasetError(explain(exc, CaseRecord, where, json=True)) from None
    if not row.id:
        raise DatasetError(f"{where}: 'id' is empty")
    check_case_id(row.id, where)
    return TestCase(id=row.id, input=row.input, expected=row.expected, tags=tuple(row.tags))


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
        if reader.fieldnames is None or not set(_REQUIRED) <= set(reader.fieldnames):
            raise DatasetError(
                f"{path}:1: the header must name at least the columns {' and '.join(_REQUIRED)}"
            )
        unknown = [name for name in reader.fieldnames if name not in _FIELDS]
        if unknown:
            raise DatasetError(
                f"{path}:1: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}"
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
