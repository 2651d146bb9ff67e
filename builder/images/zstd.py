"""zstd decompression for layers and archives, through the `zstandard` binding (Python 3.11 has no
zstd of its own). Imported only where a zstd stream is met: the binding costs import time.
"""
from __future__ import annotations

from builder.layers.tarfiles import tarfile
from typing import Any, BinaryIO

MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame; zstd:chunked adds skippable frames, which readers skip


class _Reader:
    """A forward-only file of decompressed bytes; a corrupt stream raises tarfile.ReadError, which
    callers already report as a bad archive (zstandard.ZstdError is no TarError)."""

    def __init__(self, stream: Any, error: type[BaseException]) -> None:
        self.stream, self.error = stream, error

    def read(self, n: int = -1) -> bytes:
        try:
            return self.stream.read(n)
        except self.error as e:
            raise tarfile.ReadError(f"bad zstd data: {e}") from None


def reader(raw: BinaryIO) -> BinaryIO:
    """The decompressed bytes of `raw`, across all its frames (zstd:chunked and `zstd -T0` write
    several)."""
    import zstandard

    stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    return _Reader(stream, zstandard.ZstdError)  # type: ignore[return-value]
