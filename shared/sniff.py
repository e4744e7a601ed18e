"""Look at a data file before reading it: is it a sane table (or NPZ) of a size we can hold in memory?

A full read of a file that is not a table can take unbounded time and memory (a 1 GiB sparse file named .csv is
one 1 GiB "column name" to pandas). So every user file is sniffed first, reading at most `SNIFF_BYTES` of it:
  * size: 0 bytes is refused; a CSV larger than `max_table_bytes()` is refused (it would not fit in memory
    once parsed: pandas needs ~2-5x the text size);
  * content: NUL bytes in the first `SNIFF_BYTES` mean a binary or sparse file, not CSV text; the text must be
    UTF-8; the header line must end within `SNIFF_BYTES`;
  * shape: the delimiter (, ; tab |) is detected from the first lines; the header must have 2..`MAX_COLUMNS`
    columns (features and a label);
  * Parquet: the magic bytes PAR1 at both ends, the row/column counts and the uncompressed size from the footer;
  * NPZ: a zip archive whose members' uncompressed sizes add up to at most `max_table_bytes()`.
Every refusal is a `DataError` with a bounded excerpt (`excerpt`), never the file's content in bulk.
"""

from __future__ import annotations

import csv
import gzip
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

SNIFF_BYTES = 64 * 1024  # how much of a file is read before deciding it is a table
MAX_COLUMNS = 10_000
DEFAULT_MAX_TABLE_MB = 256  # CSV text / NPZ arrays / Parquet uncompressed; override with DBLOCKS_MAX_TABLE_MB
EXCERPT_CHARS = 60


def max_table_bytes() -> int:
    """The largest table (bytes of CSV text, uncompressed NPZ arrays or Parquet data) read into memory."""
    try:
        mb = float(os.environ.get("DBLOCKS_MAX_TABLE_MB", DEFAULT_MAX_TABLE_MB))
    except ValueError:
        mb = DEFAULT_MAX_TABLE_MB
    return int(mb * 1024 * 1024)


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """repr() of `value`, cut to at most `limit` characters (messages never embed more of a user's data)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(text)} chars)"


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


@dataclass(frozen=True)
class TableSniff:
    """What sniffing found: `delimiter` (CSV only), `columns` (the header's names, or Parquet's schema)."""

    size: int
    delimiter: str
    columns: list[str]


def _too_big(path: Path, size: int, what: str) -> DataError:
    return DataError(
        f"{path}: {what} is {_mib(size)}, more than the {_mib(max_table_bytes())} a table may hold in "
        f"memory; use a sample or a subset of columns (or raise DBLOCKS_MAX_TABLE_MB)"
    )


DELIMITERS = ",;\t|"  # in order of preference


def _delimiter(lines: list[str]) -> str:
    """The first of `DELIMITERS` that splits the header into >= 2 columns and every sniffed line into as many
    (`,` wins ties, so "1.5,2" is never split on a decimal separator); else csv.Sniffer's guess, else ","."""
    for d in DELIMITERS:
        widths = {len(row) for row in csv.reader(lines, delimiter=d)}
        if len(widths) == 1 and widths.pop() >= 2:
            return d
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def sniff_csv(path: Path) -> TableSniff:
    """Check a .csv / .csv.gz file without reading more than `SNIFF_BYTES` of its text."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); a table needs a header row and data rows")
    gz = path.suffix == ".gz"
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                head = f.read(SNIFF_BYTES)
        else:
            with open(path, "rb") as f:
                head = f.read(SNIFF_BYTES)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {excerpt(str(e))})") from None
    if b"\x00" in head:
        raise DataError(
            f"{path}: contains NUL bytes, so it is a binary or sparse file, not CSV text; export the "
            f"table as CSV (comma-separated text with a header row), Parquet or NPZ"
        )
    if not gz and size > max_table_bytes():
        raise _too_big(path, size, "the file")
    complete = len(head) < SNIFF_BYTES
    if not complete:  # cut at the last line break so that a multi-byte character or a row is never split
        head = head[: head.rfind(b"\n") + 1] if b"\n" in head else head
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: is not UTF-8 text (byte {e.start}: {excerpt(head[e.start : e.start + 8])}); "
            f"save the table as UTF-8 CSV"
        ) from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: has no header row (only blank lines)")
    if not complete and "\n" not in text:
        raise DataError(
            f"{path}: the first line is longer than {SNIFF_BYTES // 1024} KiB, so it is not a table's "
            f"header row (starts {excerpt(lines[0][:40])})"
        )
    delimiter = _delimiter(lines[:20])
    header = next(csv.reader([lines[0]], delimiter=delimiter))
    if len(header) > MAX_COLUMNS:
        raise DataError(f"{path}: the header has {len(header)} columns (at most {MAX_COLUMNS}); is it a table?")
    if len(header) < 2:
        raise DataError(
            f"{path}: found a single column ({excerpt(header[0] if header else '')}); a table needs "
            f"feature columns and a label column separated by ',', ';', tab or '|'"
        )
    return TableSniff(size, delimiter, header)


def sniff_parquet(path: Path) -> TableSniff:
    """Check the magic bytes and the footer of a Parquet file (row groups are not read)."""
    size = path.stat().st_size
    if size < 12:
        raise DataError(f"{path}: is not a Parquet file ({size} bytes, too small)")
    with open(path, "rb") as f:
        start = f.read(4)
        f.seek(-4, os.SEEK_END)
        end = f.read(4)
    if start != b"PAR1" or end != b"PAR1":
        raise DataError(f"{path}: is not a Parquet file (no PAR1 magic bytes); if it is CSV, name it .csv")
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # pyarrow raises several kinds for a damaged footer
        raise DataError(f"{path}: damaged Parquet footer ({type(e).__name__}: {excerpt(str(e))})") from None
    if meta.num_columns > MAX_COLUMNS:
        raise DataError(f"{path}: has {meta.num_columns} columns (at most {MAX_COLUMNS}); is it a table?")
    data_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if data_bytes > max_table_bytes():
        raise _too_big(path, data_bytes, "the uncompressed table")
    return TableSniff(size, "", [meta.schema.column(i).name for i in range(meta.num_columns)])


def preflight(source: str) -> None:
    """Cheap checks of a `--data` argument before anything heavy is imported or read: exists, a known kind, and
    (for files) sniffed as above. Built-in dataset names and folders pass (folders are checked when read)."""
    from .errors import DataError as _DataError

    if source in ("digits", "breast_cancer", "mnist"):
        return
    path = Path(source)
    if not path.exists():
        raise _DataError(f"{path}: no such file or directory (built-in datasets: digits, breast_cancer, mnist)")
    if path.is_dir():
        return
    suffix = ("".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix).lower()
    if suffix in (".csv", ".csv.gz"):
        sniff_csv(path)
    elif suffix in (".parquet", ".pq"):
        sniff_parquet(path)
    elif suffix == ".npz":
        sniff_npz(path)
    else:
        raise _DataError(
            f"{path}: unsupported file type {excerpt(suffix)}; use .csv, .parquet, .npz or a folder of images"
        )


def sniff_npz(path: Path) -> None:
    """Check that an .npz is a zip archive whose arrays fit in memory (member headers only)."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {excerpt(str(e))})") from None
    if total > max_table_bytes():
        raise _too_big(path, total, "the uncompressed arrays")
