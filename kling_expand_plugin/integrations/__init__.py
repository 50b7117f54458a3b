"""Integrations with other runtimes (Ray Data)."""
