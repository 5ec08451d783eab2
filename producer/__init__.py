"""Producers: the Python client and CLI that submit and follow jobs."""
