"""``zq api``: the HTTP front door to the queue (FastAPI; light install, no torch)."""
