"""Canonical dimension, coordinate and identifier names: the one place they are spelled (public:
other packages import them from here).

Every module that touches the store imports these constants instead of writing the strings.
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 1

# dimensions
TRIAL: Final = "trial"
VOXEL: Final = "voxel"
ROI: Final = "roi"
STIMULUS: Final = "stimulus"

# trial coordinates
SPLIT: Final = "split"
SESSION: Final = "session"
RUN: Final = "run"
REPEAT: Final = "repeat"
SOURCE: Final = "source"
TRIAL_COORDS: Final = (STIMULUS, SPLIT, SESSION, RUN, REPEAT, SOURCE)

# voxel coordinates
VOXEL_I: Final = "voxel_i"
VOXEL_J: Final = "voxel_j"
VOXEL_K: Final = "voxel_k"
VOXEL_COORDS: Final = (VOXEL_I, VOXEL_J, VOXEL_K)
ROI_MASK: Final = "roi_mask"

# data variables
BETAS: Final = "betas"

# values
SPLITS: Final = ("train", "test", "imagery")
MEASURED: Final = "measured"

# store layout
STIMULI_GROUP: Final = "stimuli"
STAGING_GROUP: Final = "_staging"
TRASH_GROUP: Final = "_trash"
DECODED_GROUP: Final = "decoded"
RECON_GROUP: Final = "reconstructions"

# subject-group status attribute
STATUS_ATTR: Final = "nf_status"
COMPLETE: Final = "complete"
INCOMPLETE: Final = "incomplete"


def dataset_names() -> tuple[str, ...]:
    """Store dataset groups of every registered reader, built-ins and plugins
    (:func:`nfstore.readers.dataset_groups`; readers of another source of a dataset, such as
    ``mindeye2`` for ``nsd``, add none)."""
    from nfstore.readers import dataset_groups

    return tuple(dataset_groups())


def __getattr__(name: str) -> tuple[str, ...]:
    """``DATASETS``: kept for compatibility, computed from the reader registry when read (use
    :func:`dataset_names`)."""
    if name == "DATASETS":
        return dataset_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def subject_key(dataset: str, subject: str) -> str:
    """Return the store key ``'<dataset>/<subject>'``."""
    return f"{dataset}/{subject}"
