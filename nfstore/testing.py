"""Helpers for tests and benchmarks (as diffusers' ``testing_utils``): a local S3-compatible
server, and the reader contract suite :class:`ReaderTests` (imported on first use: it needs
pytest). Nothing here runs on import."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def local_s3(bucket: str = "nf-test") -> Iterator[dict[str, Any]]:
    """moto's S3 server on 127.0.0.1 (a free port) with one bucket, stopped on exit.

    Yields ``{"endpoint", "bucket", "options"}``; ``options`` are fsspec ``storage_options``
    (and :mod:`nfstore.versioned` options) for it.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1"
                     ).create_bucket(Bucket=bucket)
        yield {"endpoint": endpoint, "bucket": bucket,
               "options": {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                           "client_kwargs": {"region_name": "us-east-1"}}}
    finally:
        server.stop()


def __getattr__(name: str) -> Any:
    """``ReaderTests``: the reader contract suite (:mod:`nfstore.testing_readers`)."""
    if name == "ReaderTests":
        from nfstore.testing_readers import ReaderTests

        return ReaderTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
