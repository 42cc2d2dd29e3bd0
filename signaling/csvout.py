"""CSV the product writes (call history, later audit exports): safe to open in a spreadsheet.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a formula
by Excel, LibreOffice and Google Sheets, so text a person typed (a topic, a name) could run in the
reader's spreadsheet. As OWASP recommends ("CSV Injection"), such a text cell gets a leading single
quote, which spreadsheets show as text, and every field is quoted. Numbers are written as numbers:
a negative figure is data, not a formula.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> str | int | float:
    """One value as a CSV cell: None is empty, text that could start a formula is defused."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_csv(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """A whole CSV document: a header of ``columns``, then one line per row (missing: empty)."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow([cell(c) for c in columns])
    for row in rows:
        writer.writerow([cell(row.get(c)) for c in columns])
    return out.getvalue()
