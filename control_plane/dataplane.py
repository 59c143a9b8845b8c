"""The Rust data plane as the rest of pgward sees it (the only importer of `_dataplane`)."""

from control_plane._dataplane import DEFAULT_MAX_MESSAGE, Dataplane, detect, detect_counts

__all__ = ["DEFAULT_MAX_MESSAGE", "Dataplane", "detect", "detect_counts"]
