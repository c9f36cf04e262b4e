"""Where a store lives: a local folder or any fsspec URL (``s3://``, ``gs://``, ``abfs://``...).

Reading goes through one fsspec filesystem per opened store: zarr reads chunks through it (a
``zarr.storage.FsspecStore``, or a ``LocalStore`` for folders) and listings that zarr does not
offer (chunk files, staging folders) use the same filesystem, so local and remote stores take
one code path. Credentials and endpoints come from ``storage_options``, from fsspec's
configuration (``fsspec.config.conf``, also filled from ``FSSPEC_<PROTOCOL>_<OPTION>``
environment variables) or from the backend's own variables (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ...).
"""

from __future__ import annotations

import os
from typing import Any

from nfstore.errors import OptionError, StoreError


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for ``protocol://`` locations other than ``file://``."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def protocol_of(location: str) -> str:
    return location.split("://", 1)[0] if is_url(location) else "file"


def filesystem(location: str, storage_options: dict[str, Any] | None = None
               ) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` of a store location.

    A protocol whose package is missing (``s3fs`` for ``s3://``) is a one-line
    :class:`OptionError` naming the package.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(location, **(storage_options or {}))
    except ImportError as err:
        raise OptionError(f"{location}: reading {protocol_of(location)}:// URLs needs a package "
                          f"that is not installed ({err}); e.g. pip install s3fs") from None
    except (TypeError, ValueError) as err:
        raise OptionError(f"--storage-option: not accepted for {location}: {err}") from None


def zarr_store(location: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The read-only zarr store object over ``location``: a ``LocalStore`` for a folder, an
    ``FsspecStore`` (its own asynchronous filesystem, as zarr needs) for a URL."""
    import zarr.storage

    if not is_url(location):
        return zarr.storage.LocalStore(os.fspath(location).removeprefix("file://"),
                                       read_only=True)
    try:
        return zarr.storage.FsspecStore.from_url(location, storage_options=storage_options,
                                                 read_only=True)
    except ImportError as err:
        raise OptionError(f"{location}: reading {protocol_of(location)}:// URLs needs a package "
                          f"that is not installed ({err}); e.g. pip install s3fs") from None


def parse_storage_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dict; values ``true``/``false``, integers and JSON are typed,
    dotted keys nest (``client_kwargs.region_name=eu-west-1``)."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise OptionError(f"--storage-option: expected KEY=VALUE; got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(value, float):  # keep version-like strings such as 1.0 as given
            value = raw
        target = out
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise OptionError(f"--storage-option: {key!r} nests under a value")
        target[leaf] = value
    return out


def configure(location: str, options: dict[str, Any]) -> None:
    """Make ``options`` the defaults of ``location``'s protocol for this process (fsspec's
    configuration), so every store opened on that protocol uses them; the CLI's
    ``--storage-option``."""
    if not options:
        return
    if not is_url(location):
        raise OptionError(f"--storage-option: given for {location!r}, which is not a URL "
                          f"(s3://..., gs://...)")
    import fsspec.config

    for proto in _protocols(protocol_of(location)):
        fsspec.config.conf.setdefault(proto, {}).update(options)


def _protocols(protocol: str) -> tuple[str, ...]:
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return (protocol,)
    p = cls.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def read_text(fs: Any, path: str) -> str | None:
    """The text of ``path``, or None when it is missing."""
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StoreError(f"{path}: could not be read ({err})") from None
