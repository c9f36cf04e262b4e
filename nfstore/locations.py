"""Store locations: local folders and object-storage URLs (``s3://...``), for callers outside
the store package (the CLI's ``--storage-option``).

- :func:`is_url`: a ``protocol://`` location other than ``file://``;
- :func:`parse_storage_options`: ``KEY=VALUE`` strings to fsspec ``storage_options``;
- :func:`configure`: make options the defaults of a location's protocol for this process.
"""

from __future__ import annotations

from nfstore._remote import configure, is_url, parse_storage_options

__all__ = ["configure", "is_url", "parse_storage_options"]
