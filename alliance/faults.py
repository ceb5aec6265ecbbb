"""Named crash and fault points for the resilience tests; unset (always, outside tests), they do nothing.

``ALLIANCE_CRASH_AT=<name>`` kills the process there (SIGKILL), as kill -9 would: the crash tests prove a re-run
converges from each point. ``ALLIANCE_FAULT_AT=<stage>:<file name part>`` raises an unexpected (non-domain)
exception while that stage handles a matching file: the safety-net tests prove one broken file stops nothing.
"""

from __future__ import annotations

import os
import signal

# the night's (tests/test_crash.py); a first night is a full scoring, which commits chunk by chunk
POINTS = ("after_commit", "after_scoring_chunk", "after_publish", "after_alert_sent")
REKEY_POINTS = ("after_rekey_commit",)  # key rotation's (tests/test_rekey.py)
FAULT_STAGES = ("prepare", "load")


class InjectedFault(RuntimeError):
    """The unexpected failure a fault point raises; deliberately not an AllianceError."""


def crash_point(name: str) -> None:
    """Die here, as kill -9 would, when this point is the one named in ALLIANCE_CRASH_AT."""
    if os.environ.get("ALLIANCE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fault_point(stage: str, file_name: str) -> None:
    """Raise InjectedFault when ALLIANCE_FAULT_AT names this stage and a part of this file's name."""
    spec = os.environ.get("ALLIANCE_FAULT_AT", "")
    wanted, _, part = spec.partition(":")
    if spec and wanted == stage and part in file_name:
        raise InjectedFault(f"fault injected at {stage}")
