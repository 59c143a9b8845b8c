"""The metadata store: models, repositories, encryption of stored secrets and migrations."""
