"""Decompressing layers and archives as streams, for tarfile's stream mode ("r|"):

- gzip through zlib-ng (the `zlib-ng` binding): about twice zlib's speed, and decompressed in a thread
  of its own, which leaves the GIL while it works, so that unpacking uses a second core;
- zstd through the `zstandard` binding (Python 3.11 has no zstd of its own).

Each binding is imported only where its format is met. A corrupt stream raises tarfile.ReadError,
which callers already report as a bad archive (the bindings' own errors are no TarError).
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any, BinaryIO

from builder.layers.tarfiles import tarfile

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame; zstd:chunked adds skippable frames, which readers skip


class _Reader:
    """A forward-only file of decompressed bytes whose errors are tarfile.ReadError."""

    def __init__(self, stream: Any, errors: tuple[type[BaseException], ...], what: str) -> None:
        self.stream, self.errors, self.what = stream, errors, what

    def read(self, n: int = -1) -> bytes:
        try:
            return self.stream.read(n)
        except self.errors as e:
            raise tarfile.ReadError(f"bad {self.what} data: {e}") from None


class _Raw(io.RawIOBase):
    """`readinto` over a file that has only `read` (zlib-ng reads with readinto)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.f.read(len(b))
        b[:len(data)] = data
        return len(data)


@contextlib.contextmanager
def reader(raw: BinaryIO, compression: str) -> Iterator[BinaryIO]:
    """The decompressed bytes of `raw` ("gz", "zstd" or "" for none), across all its members or frames
    (zstd:chunked and `zstd -T0` write several). Once the block ends nothing reads `raw` any more (the
    gzip thread has stopped), so the caller may read the rest of it."""
    if compression == "gz":
        from zlib_ng import gzip_ng_threaded, zlib_ng

        stream = gzip_ng_threaded.open(_Raw(raw), "rb", threads=1)
        try:
            yield _Reader(stream, (OSError, EOFError, zlib_ng.error), "gzip")  # type: ignore[misc]
        finally:
            stream.close()
    elif compression == "zstd":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False) as stream:
            yield _Reader(stream, (zstandard.ZstdError,), "zstd")  # type: ignore[misc]
    else:
        yield raw


def sniff(raw: BinaryIO) -> str:
    """The compression of a seekable file by its magic: "gz", "zstd", or "" for anything else."""
    head = raw.read(4)
    raw.seek(0)
    return "gz" if head[:2] == GZIP_MAGIC else "zstd" if head == ZSTD_MAGIC else ""
