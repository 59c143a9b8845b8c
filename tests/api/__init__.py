"""Tests of control_plane/api."""
