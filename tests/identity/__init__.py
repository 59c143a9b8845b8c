"""Tests of control_plane/identity."""
