"""Payments: the provider contract (provider.py), the service that applies platform facts
exactly once (service.py) and the live order feed (live.py)."""
