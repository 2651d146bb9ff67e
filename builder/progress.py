"""Progress bars for long work (hashing, unpacking, copying): on a terminal only, never with --quiet."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

QUIET = False  # set by --quiet


def _wanted() -> bool:
    return not QUIET and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


@contextmanager
def bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields advance(n). A no-op unless stderr is a terminal; rich is imported only then."""
    if not _wanted():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as p:
        task = p.add_task(description, total=total)
        yield lambda n: p.advance(task, n)


class CountingReader:
    """A file wrapper that reports the bytes read: progress for readers that take a file (tarfile)."""

    def __init__(self, f: IO[bytes], advance: Callable[[int], None]) -> None:
        self.f, self.advance = f, advance

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.advance(len(data))
        return data

    def __getattr__(self, name: str) -> object:
        return getattr(self.f, name)
