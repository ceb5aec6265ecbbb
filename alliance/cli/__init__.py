"""The `alliance` command line: one thin layer over the library; domain errors become one 'Error:' line.

Commands live in modules by who uses them; importing each registers its commands on ``app`` in this order.
"""

from alliance.cli import exports, reviews, running, tools
from alliance.cli.common import EXIT_ERROR, EXIT_QUARANTINED, EXIT_REJECTED, app
from alliance.cli.exports import _ingest_all
from alliance.cli.reviews import _neutralise

__all__ = [
    "EXIT_ERROR", "EXIT_QUARANTINED", "EXIT_REJECTED", "_ingest_all", "_neutralise", "app",
    "exports", "reviews", "running", "tools",
]  # fmt: skip
