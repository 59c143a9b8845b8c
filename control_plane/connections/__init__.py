"""Registered target databases (connections): validation, storage and resolution for sessions."""
