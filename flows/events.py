"""The export-received event: which inbox files count, what the event holds, and which runs it starts."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alliance.errors import ConfigError

EXPORT_RECEIVED = "alliance.export.received"

# Names that browsers, sync tools and editors use while a file is still being written.
TEMPORARY_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", "~")


def _absolute(path: Path | str) -> Path:
    """Absolute path with `..` collapsed lexically; symlinks are left alone."""
    return Path(os.path.abspath(path))


def _inbox_of(home: Path | str) -> Path:
    """The inbox of a home folder: the same layout as Settings.inbox."""
    return _absolute(home) / "inbox"


def is_candidate(path: Path, inbox: Path) -> bool:
    """True for a regular, non-temporary file directly in inbox/<clinic_id>/ that stays in the inbox.

    Example: ``is_candidate(Path("home/inbox/northside/export.csv"), Path("home/inbox"))`` -> True.
    """
    inbox = _absolute(inbox)
    target = _absolute(path)
    try:
        clinic_id, name = target.relative_to(inbox).parts
    except ValueError:  # outside the inbox, or not exactly one folder deep
        return False
    if clinic_id.startswith(".") or name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES):
        return False
    try:
        real = target.resolve(strict=True)
        real_inbox = inbox.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError):  # vanished, unreadable, or a symlink loop
        return False
    # A symlink (file or clinic folder) must not smuggle a file from elsewhere into the pipeline.
    return real.is_relative_to(real_inbox) and stat.S_ISREG(mode)


def export_event(path: Path, home: Path) -> dict[str, Any]:
    """The event announcing one inbox file; names and size only, never anything read from the file.

    Example: ``export_event(Path("home/inbox/northside/export.csv"), Path("home"))["payload"]["clinic_id"]``
    -> ``"northside"``.
    """
    home = _absolute(home)
    target = _absolute(path)
    if not is_candidate(target, _inbox_of(home)):
        raise ConfigError(f"{target.name}: not a complete export file in an inbox/<clinic_id>/ folder")
    clinic_id = target.parent.name
    return {
        "event": EXPORT_RECEIVED,
        "resource": {
            "prefect.resource.id": f"alliance.export.{clinic_id}.{target.name}",
            "alliance.clinic": clinic_id,
            "alliance.home": str(home),
        },
        "payload": {
            "path": str(target),
            "home": str(home),
            "clinic_id": clinic_id,
            "size": target.stat().st_size,
        },
    }


def _field(source: object, key: str) -> Any:
    """A key of a mapping or an attribute of an object (Prefect's Event), None when absent."""
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def ingest_parameters(event: Mapping[str, Any] | object) -> dict[str, str] | None:
    """Flow parameters for an export-received event whose file is a candidate in its home's inbox, else None.

    Example: ``ingest_parameters(export_event(path, home))``
    -> ``{"path": "/…/inbox/northside/export.csv", "home": "/…", "clinic_id": "northside"}``.
    """
    if _field(event, "event") != EXPORT_RECEIVED:
        return None
    payload = _field(event, "payload")
    if not isinstance(payload, Mapping):
        return None
    path, home, clinic_id = payload.get("path"), payload.get("home"), payload.get("clinic_id")
    if not (isinstance(path, str) and isinstance(home, str) and isinstance(clinic_id, str)):
        return None
    # Relative paths would be read against the runner's working folder, not the watcher's.
    if not (path and home and Path(path).is_absolute() and Path(home).is_absolute()):
        return None
    target = _absolute(path)
    if not is_candidate(target, _inbox_of(home)) or target.parent.name != clinic_id:
        return None
    return {"path": str(target), "home": str(_absolute(home)), "clinic_id": clinic_id}
