"""Worker processes (flows/workers.py): a worker whose parent is killed outright ends instead of finishing work
nobody will collect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARENT = """
import time
from flows.workers import worker_pool

if __name__ == "__main__":
    pool = worker_pool(1)
    pool.submit(time.sleep, 300).running()
    while not pool._processes:
        time.sleep(0.05)
    print(*pool._processes, flush=True)
    time.sleep(300)
"""


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped yet has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_worker_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    try:
        time.sleep(1.0)  # the worker is up and sleeping on its task
        assert _running(worker)
        parent.send_signal(signal.SIGKILL)  # no chance to stop its workers
        parent.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(worker), "the worker outlived its parent"
    finally:
        if _running(worker):
            os.kill(worker, signal.SIGKILL)
        parent.kill()
