"""Embedded datasets (no downloads) and user data loaders."""
