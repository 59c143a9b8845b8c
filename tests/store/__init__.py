"""Tests of control_plane/store."""
