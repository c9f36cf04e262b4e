"""nfrecon: reconstruction and metrics (not implemented yet)."""
