"""nftrain: the contrastive trainer (issue #6; not implemented yet)."""
