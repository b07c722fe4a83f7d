"""tas_lite."""
