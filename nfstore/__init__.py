"""nfstore: the NeuroFusion feature store (Zarr v3 + xarray).

>>> import nfstore
>>> store = nfstore.open_store("nf.zarr")
>>> x = store.betas("nsd/subj01", roi="V1", split="test", average_repeats=True)
"""

from nfstore._version import __version__
from nfstore.errors import (
                            ChunkError,
                            MissingFileError,
                            NFError,
                            OptionError,
                            QueryError,
                            ReaderError,
                            SchemaError,
                            StoreError,
)
from nfstore.ingest import IngestSummary, ingest
from nfstore.store import Store, open_store
from nfstore.transaction import Transaction, transaction

__all__ = ["__version__", "open_store", "Store", "transaction", "Transaction", "ingest",
           "IngestSummary", "NFError", "ChunkError", "ReaderError", "MissingFileError",
           "SchemaError", "StoreError", "QueryError", "OptionError"]
