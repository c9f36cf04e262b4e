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
import re
from typing import Any

from nfstore.errors import ChunkError, NFError, OptionError, StoreError


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
        raise OptionError(f"storage_options: not accepted for {location}: {err}") from None


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
            raise OptionError(f"storage_options: expected KEY=VALUE; got {pair!r}")
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
                raise OptionError(f"storage_options: {key!r} nests under a value")
        target[leaf] = value
    return out


def configure(location: str, options: dict[str, Any]) -> None:
    """Make ``options`` the defaults of ``location``'s protocol for this process (fsspec's
    configuration), so every store opened on that protocol uses them; the CLI's
    ``--storage-option``."""
    if not options:
        return
    if not is_url(location):
        raise OptionError(f"storage_options: given for {location!r}, which is not a URL "
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


DENSE_ATTR = "nf_chunks_written"  # array attribute: every chunk was written (nfstore._layout)
# arrays written whole by contract, in stores written before DENSE_ATTR (embedding caches are
# read up to their ``count`` rows, all written)
DENSE_NAMES = ("betas", "embedding")
_CHUNK_KEY = re.compile(r"^(?P<array>.+)/c(?P<index>(?:/\d+)*)$")  # zarr v3 default encoding


def checked(zstore: Any, location: str, absent_is_lost: bool = True) -> Any:
    """``zstore`` wrapped so that chunk reads never hide lost data (``CheckedStore``).
    ``absent_is_lost=False`` (copying a snapshot's objects, where an absent one is deleted):
    only truncated chunks and the backend's errors raise."""
    import zarr.storage

    class CheckedStore(zarr.storage.WrapperStore):  # type: ignore[type-arg]
        """Chunk reads that raise :class:`ChunkError` where zarr would return fill values or
        a backend traceback: a chunk missing from an array whose chunks were all written
        (its ``nf_chunks_written`` attribute, or a ``betas`` or ``embedding`` array), a blosc
        chunk shorter than its header says (truncated), or a chunk the backend fails to
        return (an object deleted under a versioned store). One metadata read per array, on
        its first chunk."""

        def __init__(self, store: Any) -> None:
            super().__init__(store)
            self._arrays: dict[str, dict[str, Any]] = {}

        def _with_store(self, store: Any) -> Any:
            return type(self)(store)

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            match = _CHUNK_KEY.match(key)
            if match is None:
                return await self._store.get(key, prototype, byte_range)
            array, index = match["array"], tuple(int(i) for i in match["index"].split("/")[1:])
            where = f"{location}/{array}: chunk {index} ({key})"
            hint = f"`nf validate {location}` lists every damaged chunk"
            try:
                buf = await self._store.get(key, prototype, byte_range)
            except NFError:
                raise
            except Exception as err:  # the backend's own error (icechunk: NoSuchKey)
                raise ChunkError(f"{where}: expected a readable chunk; found "
                                 f"{describe_error(err)}; {hint}", key) from None
            if buf is None:
                if absent_is_lost and (await self._meta(array, prototype)).get("dense"):
                    raise ChunkError(f"{where}: expected a stored chunk (every chunk of the "
                                     f"array was written); found none (lost: it would read as "
                                     f"fill values); {hint}", key)
                return None
            if byte_range is None and (await self._meta(array, prototype)).get("blosc"):
                found, expected = len(buf), _blosc_size(buf)
                if found != expected:
                    raise ChunkError(f"{where}: expected {expected} bytes (its blosc header); "
                                     f"found {found} (truncated or damaged); {hint}", key)
            return buf

        async def _meta(self, array: str, prototype: Any) -> dict[str, Any]:
            if array not in self._arrays:
                import json

                raw = await self._store.get(f"{array}/zarr.json", prototype)
                doc = json.loads(raw.to_bytes()) if raw is not None else {}
                codecs = [c.get("name") for c in doc.get("codecs", [])
                          if isinstance(c, dict)]
                self._arrays[array] = {
                    "dense": DENSE_ATTR in (doc.get("attributes") or {})
                    or array.rsplit("/", 1)[-1] in DENSE_NAMES,
                    "blosc": bool(codecs) and codecs[-1] == "blosc"}
            return self._arrays[array]

    return CheckedStore(zstore)


def describe_error(err: BaseException) -> str:
    """One line for a backend's error: the service's code and message where it names them
    (icechunk and S3: ``NoSuchKey: ...``), else the error's type and first line."""
    text = str(err)
    found = re.search(r'code: "(\w+)"(?:, message: "([^"]*)")?', text)
    if found:
        return f"{found[1]}: {found[2]}" if found[2] else found[1]
    cause = re.findall(r"->\s*([^\n]+)", text)  # icechunk's chain of causes, last deepest
    if cause:
        return cause[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def reach(location: str, what: str, call: Any) -> Any:
    """``call()``; a backend's error (missing bucket, unreachable endpoint, credentials) is a
    one-line :class:`StoreError` naming ``location`` and ``what`` was expected there."""
    try:
        return call()
    except NFError:
        raise
    except Exception as err:
        raise StoreError(f"{location}: expected {what}; found {describe_error(err)}") from None


def _blosc_size(buf: Any) -> int:
    """The compressed size a blosc frame's header states: bytes 12-16 of its 16-byte header,
    little-endian (c-blosc's documented frame format); -1 where there is no whole header."""
    import struct

    head = buf.as_numpy_array()[:16].tobytes()
    return struct.unpack_from("<I", head, 12)[0] if len(head) == 16 else -1
