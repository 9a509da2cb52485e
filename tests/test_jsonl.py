"""The JSON-lines reader and writer (issue 24): lines end at "\\n" only, torn tails are tolerated and cut,
damaged middle lines are errors, and a failed append leaves the file as it was."""

from __future__ import annotations

import errno
import gzip
import json
import subprocess
import sys

import pytest

from specbench import jsonl
from specbench.errors import SpecbenchError
from specbench.jsonl import append_jsonl, read_jsonl, write_jsonl

#: what real models emit and `str.splitlines()` breaks a line at
LINE_BREAKERS = "\x85\u2028\u2029\r\x0b\x0c\x1c\x1d\x1e"


def test_a_record_holding_unicode_line_breaks_is_one_record(tmp_path):
    """The regen corpus of issue 24: written with raw U+0085 (older specbench wrote `ensure_ascii=False`)."""
    path = tmp_path / "legacy.jsonl"
    rows = [{"id": str(i), "response": f"a{c}b"} for i, c in enumerate(LINE_BREAKERS)]
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    assert read_jsonl(path) == rows


def test_the_writer_emits_ascii_lines_any_line_reader_splits_right(tmp_path):
    rows = [{"t": f"x{c}y\ud800é中"} for c in LINE_BREAKERS + "\n\x00"]
    write_jsonl(tmp_path / "w.jsonl", rows)
    data = (tmp_path / "w.jsonl").read_bytes()
    assert data.isascii() and len(data.decode().splitlines()) == len(rows)
    assert read_jsonl(tmp_path / "w.jsonl") == rows


def test_torn_last_line_is_skipped_and_a_damaged_middle_line_is_an_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "resp')
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    path.write_text('{"id": "a"}\n{bad\n{"id": "c"}\n')
    with pytest.raises(SpecbenchError) as err:
        read_jsonl(path, fix="delete it")
    assert str(err.value).startswith(f"cannot parse {path} line 2: not JSON") and str(err.value).endswith("; delete it")
    path.write_text('{"id": "a"}\n{bad}\n')  # a finished last line is damage, not a torn append
    with pytest.raises(SpecbenchError, match="line 2"):
        read_jsonl(path)
    path.write_bytes(b'{"id": "a"}\n{"id": "\xff"}\n{"id": "c"}\n')
    with pytest.raises(SpecbenchError, match="line 2: not UTF-8"):
        read_jsonl(path)
    path.write_text('{"id": "a"}\n{"id": "b", "resp')
    with pytest.raises(SpecbenchError, match="line 2"):
        read_jsonl(path, torn_tail=False)


def test_crlf_bom_blank_lines_and_gzip(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n  \n{"a": 2}\r\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert read_jsonl(path, numbered=True) == [(1, {"a": 1}), (4, {"a": 2})]
    gz = tmp_path / "w.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"a": "\xc2\x85"}\n'))
    assert read_jsonl(gz) == [{"a": "\x85"}]


def test_append_cuts_a_torn_tail_and_completes_a_line_missing_its_newline(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n{"id": 2, "te')
    append_jsonl(path, [{"id": 3}])
    assert path.read_text() == '{"id": 1}\n{"id": 3}\n'
    path.write_text('{"id": 1}')  # complete, written by a tool that leaves out the last newline
    append_jsonl(path, [{"id": 2}])
    assert read_jsonl(path) == [{"id": 1}, {"id": 2}]


def _full_disk_after(nbytes):
    """A `_write_all` that writes `nbytes` of its data, then fails as a full disk does."""
    def write(f, data):
        f.write(data[:nbytes])
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    append_jsonl(path, [{"id": 1}, {"id": 2}])
    before = path.read_bytes()
    monkeypatch.setattr(jsonl, "_write_all", _full_disk_after(13))
    with pytest.raises(SpecbenchError) as err:
        append_jsonl(path, [{"id": 3, "text": "x" * 100}], fix="free space")
    assert "No space left on device" in str(err.value) and str(err.value).endswith("free space")
    assert "\n" not in str(err.value) and path.read_bytes() == before
    with pytest.raises(SpecbenchError, match="previous file is kept"):
        write_jsonl(path, [{"id": 9}])
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_a_torn_tail_longer_than_one_read_chunk_is_cut_at_the_last_newline(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": 1}\n' + b'{"id": 2, "text": "' + b"x" * 200_000)
    append_jsonl(path, [{"id": 3}])
    assert read_jsonl(path) == [{"id": 1}, {"id": 3}]
    path.write_bytes(b'{"text": "' + b"y" * 200_000)  # a torn first line
    append_jsonl(path, [{"id": 4}])
    assert path.read_bytes() == b'{"id": 4}\n'


_FILE_SIZE_LIMIT_CHILD = r"""
import resource, signal, sys
from specbench.errors import SpecbenchError
from specbench.jsonl import append_jsonl
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
for i in range(10_000):
    try:
        append_jsonl(sys.argv[1], [{"id": i, "text": "x" * 3000}, {"id": i, "arm": "baseline"}], fix="free space")
    except SpecbenchError as e:
        print(f"{i} {e}")
        break
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE file faults are Linux-only")
def test_a_real_write_fault_mid_append_is_one_line_and_leaves_only_whole_records(tmp_path):
    """A real kernel write failure, not a patched writer: the file may not grow past 100 000 bytes, so an
    append fails partway through its bytes. Buffered, the close retried the rest after the cut and raised
    past the one-line error, leaving a torn record (what a full disk did)."""
    path = tmp_path / "records.jsonl"
    done = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT_CHILD, str(path), "100000"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    failed_at, message = done.stdout.strip().split(" ", 1)
    assert "\n" not in message and message.startswith("cannot write") and message.endswith("free space")
    blob = path.read_bytes()
    assert blob.endswith(b"\n") and len(blob) <= 100_000
    rows = read_jsonl(path, torn_tail=False)
    assert len(rows) == 2 * int(failed_at) and [r["id"] for r in rows[::2]] == list(range(int(failed_at)))
