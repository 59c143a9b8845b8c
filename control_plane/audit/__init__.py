"""The audit log: hash-chained records of sessions and statements, signed checkpoints, search,
export and verification. docs/audit.md describes the format an auditor re-implements."""
