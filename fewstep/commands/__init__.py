"""Subcommands of the `fewstep` CLI (one module each)."""
