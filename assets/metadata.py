"""DataFrames as Dagster table metadata: a sortable table in the UI instead of markdown."""

from __future__ import annotations

import numpy as np
import pandas as pd
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema


def cell(value: object, digits: int = 4) -> str | int | float | bool | None:
    """A table cell: numbers rounded, NaN and ±∞ as empty (JSON and the UI have neither),
    anything else as text."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return round(float(value), digits) if np.isfinite(value) else None
    return str(value)


def _column_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def frame_table(frame: pd.DataFrame, descriptions: dict[str, str] | None = None) -> MetadataValue:
    """`frame` as a table, its columns described by `descriptions` where given."""
    described = descriptions or {}
    schema = TableSchema(
        [
            TableColumn(str(name), _column_type(frame[name]), description=described.get(name))
            for name in frame.columns
        ]
    )
    records = [
        TableRecord({str(k): cell(v) for k, v in row.items()}) for row in frame.to_dict("records")
    ]
    return MetadataValue.table(records=records, schema=schema)
