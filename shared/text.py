"""Text for the language blocks: a corpus split by document, and the byte-level tokenizer all text models use.

Tokens are the UTF-8 bytes of the text (vocabulary 256; a model family adds its own special tokens above 255,
e.g. the absorbing [MASK] of masked diffusion). Bytes need no tokenizer training, cover any language and code,
and make bits per byte (BPB, the text8 literature's "BPC" for ASCII text) directly comparable across models.

The built-in corpus is the Python standard library's source of the running interpreter (`stdlib_corpus()`):
about 10 MB of English comments, docstrings and code in ~560 files, on every machine with Python, under the
Python Software Foundation License 2.0. A company brings its own text with `load_text(path)`: a UTF-8 text file
or a folder of them. Both are split by document (a file of the stdlib or of the folder; a 4-8 KB run of lines
of a single file) into train/validation/test by a hash of the document's name, so the split is fixed whatever
else the corpus holds.

Documents also carry a `source` (the stdlib's top-level package, the user's subfolder): the federated text task
gives each company the documents of a few sources, which makes the shards non-IID by source.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

VOCAB_SIZE = 256  # bytes; families add their special tokens at 256, 257, ...
STDLIB_LICENSE = "Python Software Foundation License 2.0 (PSF-2.0)"
_STDLIB_SKIP = {"site-packages", "dist-packages", "idlelib", "turtledemo", "lib2to3", "ensurepip", "tkinter"}
_SPLIT = (90, 95)  # hash percentile < 90: train, < 95: validation, else test
_CHUNK_BYTES = 4096  # a single user file is cut into documents of about this many bytes, at line ends


@dataclass(frozen=True)
class Document:
    name: str  # stable key (relative path, or path#chunk); decides the split
    source: str  # what it comes from (stdlib package, user subfolder): the federation's non-IID unit
    data: bytes  # UTF-8 text


@dataclass(frozen=True)
class TextCorpus:
    """Documents split into train/val/test by a hash of each document's name (no document in two splits)."""

    name: str
    license: str
    train: tuple[Document, ...]
    val: tuple[Document, ...]
    test: tuple[Document, ...]

    def split(self, which: str) -> tuple[Document, ...]:
        if which not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, not {which!r}")
        return getattr(self, which)

    @property
    def num_bytes(self) -> int:
        return sum(len(d.data) for s in (self.train, self.val, self.test) for d in s)

    @property
    def digest(self) -> str:
        """sha256 over the documents' names and bytes in split order: which corpus a number was measured on."""
        h = hashlib.sha256()
        for s in (self.train, self.val, self.test):
            for d in s:
                h.update(d.name.encode() + b"\0" + hashlib.sha256(d.data).digest())
        return h.hexdigest()[:16]

    def sources(self) -> list[str]:
        return sorted({d.source for d in self.train})


def _split_of(name: str) -> str:
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < _SPLIT[0] else "val" if bucket < _SPLIT[1] else "test"


def split_documents(name: str, license: str, docs: list[Document]) -> TextCorpus:
    """Split by document name hash (90/5/5). A corpus too small to fill every split by hash gets its last
    documents moved into validation and test, so both are never empty (at least 3 documents are needed)."""
    if len(docs) < 3:
        raise DataError(
            f"{name}: {len(docs)} document(s) of text; at least 3 are needed (train, validation and test are split "
            "by document): give a longer file or a folder of text files"
        )
    parts: dict[str, list[Document]] = {"train": [], "val": [], "test": []}
    for d in sorted(docs, key=lambda d: d.name):
        parts[_split_of(d.name)].append(d)
    for held in ("test", "val"):
        if not parts[held]:
            parts[held].append(
                parts["train"].pop() if len(parts["train"]) > 1 else parts["val" if held == "test" else "test"].pop()
            )
    return TextCorpus(name, license, tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]))


def stdlib_corpus() -> TextCorpus:
    """The running Python's standard library source (.py files outside tests, IDLE, Tk and site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in _STDLIB_SKIP or part.startswith("test") or part == "__pycache__" for part in rel.parts):
            continue
        data = p.read_bytes()
        if not data.strip():
            continue
        source = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else "toplevel"
        docs.append(Document(rel.as_posix(), source, data))
    return split_documents("python-stdlib", STDLIB_LICENSE, docs)


def _check_text(data: bytes, where: str) -> None:
    if not data.strip():
        raise DataError(f"{where} is empty: give a UTF-8 text file with some text in it")
    if b"\0" in data[:65536]:
        raise DataError(
            f"{where} looks binary (it contains NUL bytes), not text: give UTF-8 text files (.txt, .md, code)"
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{where} is not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}); convert it first, e.g. "
            f"`iconv -f latin1 -t utf-8 FILE > FILE.utf8`"
        ) from None


def _chunks(data: bytes, size: int = _CHUNK_BYTES) -> list[bytes]:
    """Cut text into runs of `size` to 2 `size` bytes at line ends. Where no line ends in that range (a file of
    one long line: minified text, a CSV-like dump) the cut is after the range's last space, else at the last
    UTF-8 character boundary, so no character is split and every document holds text."""
    out, start = [], 0
    while start < len(data):
        lo, hi = start + size, start + 2 * size
        end = data.find(b"\n", lo, hi)
        if end >= 0:
            end += 1
        elif len(data) <= hi:
            end = len(data)
        elif (space := data.rfind(b" ", lo, hi)) >= 0:
            end = space + 1
        else:
            end = hi
            while end > lo and data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte
                end -= 1
        out.append(data[start:end])
        start = end
    return out


def load_text(path: str | Path, *, max_bytes: int = 1 << 30) -> TextCorpus:
    """A company's own text: one UTF-8 file (cut into 4-8 KB documents, `_chunks`) or a folder of UTF-8 files (each
    file a document, its first subfolder its source; hidden files skipped). Raises DataError naming the file and
    what to do for a missing path, an empty file, binary data or text that is not UTF-8."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist: give a UTF-8 text file or a folder of text files")
    if p.is_file():
        data = p.read_bytes()
        _check_text(data, str(p))
        docs = [Document(f"{p.name}#{i}", p.stem, c) for i, c in enumerate(_chunks(data))]
        return split_documents(p.name, "the company's own", docs)
    files = sorted(
        f for f in p.rglob("*") if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts)
    )
    if not files:
        raise DataError(f"{p} has no files: put UTF-8 text files (.txt, .md, code) in it")
    docs, total = [], 0
    for f in files:
        data = f.read_bytes()
        rel = f.relative_to(p)
        _check_text(data, str(f))
        total += len(data)
        if total > max_bytes:
            raise DataError(f"{p} holds more than {max_bytes} bytes of text; give a smaller folder or raise max_bytes")
        docs.append(Document(rel.as_posix(), rel.parts[0] if len(rel.parts) > 1 else p.name, data))
    if len(docs) < 3:  # a folder of one or two files: cut them like a single file
        docs = [Document(f"{d.name}#{i}", d.source, c) for d in docs for i, c in enumerate(_chunks(d.data))]
    return split_documents(p.name, "the company's own", docs)


def encode(text: str | bytes) -> np.ndarray:
    """Token ids of text: its UTF-8 bytes as uint8."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return np.frombuffer(data, dtype=np.uint8).copy()


def decode(ids) -> str:
    """Text of token ids; ids >= 256 (a family's special tokens) and broken UTF-8 show as U+FFFD."""
    arr = np.asarray(ids).reshape(-1)
    return bytes(int(i) if 0 <= int(i) < VOCAB_SIZE else 0xFF for i in arr).decode("utf-8", errors="replace")


class TokenStream:
    """The documents of one split as one token array (concatenated in order), cut into training windows.

    `batch()` draws random windows (training); `windows()` gives fixed, non-overlapping windows from the
    start (evaluation: the same bytes for every model compared)."""

    def __init__(self, docs: tuple[Document, ...] | list[Document]):
        if not docs:
            raise DataError("no documents in this split")
        self.ids = np.frombuffer(b"".join(d.data for d in docs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rng: np.random.Generator, batch_size: int, seq_len: int):
        import torch

        if len(self.ids) <= seq_len:
            raise DataError(f"{len(self.ids)} bytes of text cannot fill windows of {seq_len}: give more text")
        starts = rng.integers(0, len(self.ids) - seq_len, size=batch_size)
        return torch.from_numpy(np.stack([self.ids[s : s + seq_len] for s in starts]).astype(np.int64))

    def windows(self, seq_len: int, max_windows: int | None = None):
        import torch

        n = len(self.ids) // seq_len
        if max_windows is not None:
            n = min(n, max_windows)
        if n == 0:
            raise DataError(f"{len(self.ids)} bytes of text cannot fill one window of {seq_len}")
        return torch.from_numpy(self.ids[: n * seq_len].reshape(n, seq_len).astype(np.int64))
