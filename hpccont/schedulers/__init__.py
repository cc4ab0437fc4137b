"""One module per batch system behind the same interface (see common.py)."""
