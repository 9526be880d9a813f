"""Connections to what the gateway keeps its state in: Redis (reconnecting, scripts, health)
and SQLite (one thread per database), and the registry of nodes sharing a Redis."""
