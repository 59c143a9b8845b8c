"""Policies: documents, statement classification with the PostgreSQL parser, and decisions."""
