"""Reading the CSV files of a data set so that every fault names the file and the line.

pandas reports a Latin-1 byte as a ``UnicodeDecodeError`` at a byte offset, a sheet saved with
semicolons as one column whose name holds every header, and an empty cell as NaN (or "nan" once
converted to text). These helpers turn each into one line with the file, the line number and
what to do. Line numbers count the header as line 1, as an editor shows them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OTHER_SEPARATORS = (";", "\t", "|")


def _line_of_byte(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        return f.read(offset).count(b"\n") + 1


def _first_undecodable(path: Path) -> tuple[int, int] | None:
    """(line, byte value) of the first byte that is not UTF-8, reading line by line."""
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, line[err.start]
    return None


def read_csv(path, needed, **kwargs):
    """``pd.read_csv(path, **kwargs)`` with one-line errors for an encoding that is not UTF-8, a
    malformed row and columns separated by something else than commas (``needed``: the columns
    the caller requires, to recognise the last case)."""
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, **kwargs)
    except UnicodeDecodeError as err:
        found = _first_undecodable(path)
        line, byte = found if found else (_line_of_byte(path, err.start), err.object[err.start])
        raise ValueError(
            f"{path}, line {line}: byte 0x{byte:02x} is not UTF-8 (the file was saved as Latin-1 or "
            f"Windows-1252?); save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: not a well-formed CSV file ({' '.join(str(err).split())[:200]})") from None
    columns = [str(c).strip() for c in table.columns]
    if not all(c in columns for c in needed):
        with path.open("rb") as f:
            first = f.readline().decode("utf-8", errors="replace")
        for sep in OTHER_SEPARATORS:
            if first.count(sep) > first.count(","):
                raise ValueError(
                    f"{path}: the columns are separated by {sep!r}, not commas (a spreadsheet saved with "
                    f"another locale?); save it as comma-separated CSV")
    return table


def header(path, **kwargs) -> list[str]:
    """The raw column names of a CSV file (reads only the first line)."""
    return list(read_csv(path, (), nrows=0, **kwargs).columns)


def check_filled(table, columns, path, what: str = "") -> None:
    """Raise if a cell of ``columns`` is empty (NaN, or only spaces), naming the line and the count."""
    for column in columns:
        values = table[column]
        empty = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
        if empty.any():
            rows = np.flatnonzero(empty)
            raise ValueError(
                f"{path}, line {rows[0] + 2}: empty {column!r} ({len(rows)} row(s) in all, lines "
                f"{', '.join(str(r + 2) for r in rows[:5])}{' ...' if len(rows) > 5 else ''}); every row "
                f"needs one{what}: fill it in or delete the row")
