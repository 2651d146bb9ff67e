"""tarfile with PEP 706's extraction filters (data_filter, tar_filter, FilterError): the standard
library's where it has them (3.11.4+), else the same module from backports.tarfile, a dependency only
there. Debian 12's python3.11 (3.11.2) has no filters. Every module that reads or classifies tar
members imports tarfile from here, so that their error classes are one and the same."""
from __future__ import annotations

import tarfile

if not hasattr(tarfile, "data_filter"):  # pragma: no cover - Python before 3.11.4
    from backports import tarfile  # type: ignore[no-redef]

__all__ = ["tarfile"]
