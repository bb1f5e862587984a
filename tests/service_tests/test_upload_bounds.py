"""Uploads cannot make the API spend unbounded memory or CPU: zips are inflated a chunk at a
time against real byte counts, only stored and deflated entries are read, and the pickle
scan has bounds of size, depth and time. Each hostile file is a 422 naming the problem.

The server's own peak memory under a decompression bomb is measured on a real server
in test_api_server.py.
"""

from __future__ import annotations

import bz2
import random
import struct
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from service.errors import InvalidUploadError
from service.weights_check import (
    MAX_PICKLE_BYTES,
    MAX_ZIP_ENTRIES,
    inspect_weights,
    scan_pickle,
)
from tests.service_tests.conftest import Api

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: A real state dict's pickle shape, with no tensors; enough to reach the checks.
PICKLE = b"\x80\x02}q\x00."


def raw_zip(entries: list[tuple[str, bytes, int, int, int]], *,
            claimed_entries: int | None = None, crc: int | None = None) -> bytes:
    """A zip written by hand: (name, stored bytes, method, flags, claimed inflated size)
    per entry, so that sizes, methods and flags can lie (``crc``: of the inflated bytes of
    compressed entries; stored ones get theirs)."""
    body, directory = b"", b""
    for name, data, method, flags, size in entries:
        checksum = zlib.crc32(data) if method == zipfile.ZIP_STORED else (crc or 0)
        encoded = name.encode()
        header = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0, checksum,
                             len(data), size, len(encoded), 0)
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0,
                                 0, checksum, len(data), size, len(encoded), 0, 0, 0, 0, 0,
                                 len(body)) + encoded
        body += header + encoded + data
    count = len(entries) if claimed_entries is None else claimed_entries
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), len(body),
                      0)
    return body + directory + end


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def deflate_bomb(inflated_mib: int) -> bytes:
    """Deflated zeros, compressed a MiB at a time (never held inflated)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1024 * 1024)
    return b"".join(compressor.compress(chunk) for _ in range(inflated_mib)) + compressor.flush()


def bz2_bomb_zip(inflated_mib: int = 300) -> bytes:
    """The probe's bomb: bz2 ``data.pkl`` claiming 1 KiB that inflates ``inflated_mib``."""
    compressor = bz2.BZ2Compressor(9)
    chunk = bytes(1024 * 1024)
    data = b"".join(compressor.compress(chunk) for _ in range(inflated_mib))
    data += compressor.flush()
    return raw_zip([("archive/data.pkl", data, zipfile.ZIP_BZIP2, 0, 1024)])


def _inspect(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "upload.part"
    path.write_bytes(content)
    with pytest.raises(InvalidUploadError) as refused:
        inspect_weights(path)
    return str(refused.value)


def test_only_stored_and_deflated_entries_are_read(tmp_path: Path) -> None:
    assert "method 12" in _inspect(tmp_path, bz2_bomb_zip(inflated_mib=8))
    lzma = raw_zip([("archive/data.pkl", b"\0" * 64, zipfile.ZIP_LZMA, 0, 64)])
    assert "method 14" in _inspect(tmp_path, lzma)
    aes = raw_zip([("archive/data.pkl", b"\0" * 64, 99, 0, 64)])
    assert "method 99" in _inspect(tmp_path, aes)
    encrypted = raw_zip([("archive/data.pkl", PICKLE, zipfile.ZIP_STORED, 0x1, len(PICKLE))])
    assert "encrypted" in _inspect(tmp_path, encrypted)


def test_inflation_counts_real_bytes_whatever_the_zip_claims(tmp_path: Path) -> None:
    # Ratio: 2 MiB of zeros from a few KiB is no state dict, whatever size is claimed
    # (claimed too small, reading stops there and the checksum fails).
    for claimed, said in ((2 * 2**20, "decompression bomb"), (2**31, "decompression bomb"),
                          (1024, "Bad CRC")):
        bomb = raw_zip([("archive/data.pkl", deflate_bomb(2), zipfile.ZIP_DEFLATED, 0, claimed)])
        assert said in _inspect(tmp_path, bomb), claimed
    # Size: more than MAX_PICKLE_BYTES is refused however little it compresses.
    noise = random.Random(0).randbytes(MAX_PICKLE_BYTES + 2**20)
    large = raw_zip([("archive/data.pkl", noise, zipfile.ZIP_STORED, 0, len(noise))])
    assert "larger than" in _inspect(tmp_path, large)


def test_a_deflated_state_dict_still_passes(tmp_path: Path) -> None:
    from tests.service_tests.test_api_weights import torch_state_dict_bytes

    source = zipfile.ZipFile(__import__("io").BytesIO(torch_state_dict_bytes()))
    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            archive.writestr(info.filename, source.read(info))
    stored = tmp_path / "stored.pt"
    stored.write_bytes(torch_state_dict_bytes())
    assert inspect_weights(path) == inspect_weights(stored)


def test_zips_announcing_more_entries_than_any_state_dict_are_refused(tmp_path: Path) -> None:
    many = raw_zip([("archive/data.pkl", PICKLE, zipfile.ZIP_STORED, 0, len(PICKLE))],
                   claimed_entries=MAX_ZIP_ENTRIES + 1)
    assert "entries" in _inspect(tmp_path, many)
    # The zip64 record's count is the one believed when there is one.
    path = tmp_path / "zip64.zip"
    with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
        archive.writestr("archive/data.pkl", PICKLE)
    content = path.read_bytes()
    start = content.rfind(b"PK\x06\x06")
    assert start < 0  # a small zip has none: make one that claims too many entries
    end = content.rfind(b"PK\x05\x06")
    directory_size, directory_at = struct.unpack("<II", content[end + 12:end + 20])
    record = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 10**9, 10**9,
                         directory_size, directory_at)
    locator = struct.pack("<IIQI", 0x07064B50, 0, end, 1)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, directory_size,
                       directory_at, 0)
    zip64 = content[:end] + record + locator + eocd
    assert "entries" in _inspect(tmp_path, zip64)


def test_the_pickle_scan_is_bounded_in_time_and_depth() -> None:
    deep = b"\x80\x02" + b"N" * 2_000_000 + b"."  # two million NONEs on the stack
    started = time.process_time()
    with pytest.raises(InvalidUploadError, match="too deep"):
        scan_pickle(deep)
    flat = b"\x80\x02" + b"N0" * 1_000_000 + b"."  # push, pop: a flat stack, slow to scan
    with pytest.raises(InvalidUploadError, match="too slow"):
        scan_pickle(flat, max_seconds=0.2)
    assert time.process_time() - started < 5


@sqlite_only
def test_item_7_zips_answer_422_not_500(api: Api) -> None:
    for content, said in (
            (raw_zip([("archive/data.pkl", b"\0" * 64, 99, 0, 64)]), "method 99"),
            (raw_zip([("archive/data.pkl", PICKLE, zipfile.ZIP_STORED, 0x1, len(PICKLE))]),
             "encrypted"),
            (raw_zip([("archive/data.pkl", deflated(PICKLE), zipfile.ZIP_DEFLATED, 0,
                       len(PICKLE))], crc=zlib.crc32(PICKLE)), "no tensors")):
        response = api.client.post("/v1/weights", files={"file": ("w.pt", content)})
        assert response.status_code == 422, response.text
        assert said in response.json()["detail"]
    assert api.settings.upload_dir is not None
    assert [p for p in api.settings.upload_dir.rglob("*") if p.is_file()] == []
