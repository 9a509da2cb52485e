"""The one JSON-lines reader and writer for every file specbench keeps (issue 24).

Regen corpora, run records, Spec-Bench answer files and suites' data files hold model output and
other arbitrary Unicode. `str.splitlines()` and text-mode line iteration also end a line at U+0085,
U+2028, U+2029 or a lone "\\r", so a valid record whose text holds one of them reads as two damaged
lines. Here a line ends at b"\\n" only. The writer emits ASCII (`ensure_ascii`), so every file we
write splits correctly in any reader, older specbench versions and Spec-Bench's scripts included,
and strings with lone surrogates survive too.

Failure rules (one-line errors, DESIGN.md §6):
* a last line with no "\\n" after it that does not parse is a torn append (the writer was killed
  mid-line): reads skip it, the next append cuts it off;
* any other line that does not parse stops the read with file, line number and what to do —
  never a silently skipped record;
* an append is one write then fsync; when it fails (a full disk) the file is cut back to its length
  before the append, so the records already there stay intact and no partial line is left.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
from pathlib import Path

from specbench.errors import SpecbenchError

DEFAULT_FIX = "repair or delete that line"


def dumps(row) -> str:
    """One record as one line of ASCII JSON (no line break of any kind inside)."""
    return json.dumps(row, ensure_ascii=True, default=str)


def parse_jsonl(blob: bytes, name: str, fix: str = DEFAULT_FIX, torn_tail: bool = True) -> list[tuple[int, object]]:
    """(line number, record) for each non-blank line of a JSON-lines file's bytes. `name` and `fix` make
    the error for a damaged line; `torn_tail=False` for finished files, where a cut last line is damage."""
    lines = blob.split(b"\n")
    rows = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rows.append((n, json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8"))))
        except UnicodeDecodeError:
            problem = "not UTF-8"
        except json.JSONDecodeError as e:
            problem = f"not JSON ({e.msg}, column {e.colno})"
        else:
            continue
        if torn_tail and n == len(lines):  # no "\n" after it: an append cut short
            break
        raise SpecbenchError(f"cannot parse {name} line {n}: {problem}; {fix}")
    return rows


def read_jsonl(path: str | Path, fix: str = DEFAULT_FIX, torn_tail: bool = True, numbered: bool = False) -> list:
    """Records of a `.jsonl` (or `.jsonl.gz`) file, or (line number, record) pairs with `numbered`;
    OSError when the file cannot be read at all."""
    path = Path(path)
    blob = path.read_bytes()
    if path.suffix == ".gz":
        blob = gzip.decompress(blob)
    rows = parse_jsonl(blob, str(path), fix, torn_tail)
    return rows if numbered else [row for _, row in rows]


def _write_all(f, data: bytes) -> None:
    """Every byte of `data` to the disk; the one place a file fault (ENOSPC) surfaces. Files here are
    unbuffered, so a failed write leaves nothing in a buffer that closing the file would try again (on a
    really full disk that retry wrote a partial line after the cut and raised past the one-line error)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
    f.flush()
    os.fsync(f.fileno())


def _prepare_tail(f) -> tuple[int, bytes]:
    """(length to keep, bytes to write first): a torn last line is dropped; a complete one that only
    lacks its "\\n" (written by another tool) gets it."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return 0, b""
    f.seek(max(0, end - 1))
    if f.read(1) == b"\n":
        return end, b""
    keep, pos = 0, end
    while pos > 0:  # back to the last "\n", a chunk at a time
        start = max(0, pos - 65536)
        f.seek(start)
        cut = f.read(pos - start).rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        pos = start
    f.seek(keep)
    try:
        json.loads(f.read().decode("utf-8"))
        return end, b"\n"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return keep, b""


def append_jsonl(path: str | Path, rows, fix: str = "") -> None:
    """Append `rows` durably and all-or-nothing; on a write failure the file is as it was before."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(dumps(r) + "\n" for r in rows).encode("ascii")
    with open(path, "a+b", buffering=0) as f:
        keep, lead = _prepare_tail(f)
        f.truncate(keep)
        try:
            _write_all(f, lead + data)
        except OSError as e:
            try:
                f.truncate(keep)
            except OSError:
                pass
            raise SpecbenchError(f"cannot write {path}: {e.strerror or e}; the records before this write are "
                                 f"kept{'; ' + fix if fix else ''}") from None


def write_jsonl(path: str | Path, rows, fix: str = "") -> None:
    """Replace `path` with `rows` atomically (a temporary file, then rename): the old file survives a
    failed write."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb", buffering=0) as f:
            _write_all(f, "".join(dumps(r) + "\n" for r in rows).encode("ascii"))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SpecbenchError(f"cannot write {path}: {e.strerror or e}; the previous file is kept"
                             f"{'; ' + fix if fix else ''}") from None
