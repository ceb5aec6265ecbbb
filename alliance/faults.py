"""Named crash points for the crash tests: with ALLIANCE_CRASH_AT=<name> the process dies there (SIGKILL).

Unset (always, outside tests), a crash point does nothing. They mark the places where a crash is most
likely to lose or duplicate something, so the tests can prove a re-run converges from each of them.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_commit", "after_publish", "after_alert_sent")


def crash_point(name: str) -> None:
    """Die here, as kill -9 would, when this point is the one named in ALLIANCE_CRASH_AT."""
    if os.environ.get("ALLIANCE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
