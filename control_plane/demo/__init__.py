"""The `pgward demo` command: a throwaway target with PII, the metadata store and the gateway."""
