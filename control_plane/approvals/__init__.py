"""Approvals: statement reviews (held or deferred), just-in-time access requests, the approvers' votes,
webhooks out (Standard Webhooks, Slack) and decisions in (Slack interactions, signed callbacks)."""
