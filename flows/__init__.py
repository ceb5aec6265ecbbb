"""Prefect flows and the plain pipeline functions they wrap."""
