"""Where an export's bytes go once ingested: its export id, its archive path, and the move out of the inbox."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from alliance.permissions import make_private
from alliance.settings import Settings
from flows.watcher import Signature, file_signature

ARCHIVED_PREFIX = re.compile(r"^[0-9a-f]{16}__")


def export_id_of(clinic_id: str, sha256: str, attempt: int = 0) -> str:
    """The id of one ingest of these bytes at this clinic; a rejected file retried after a fix gets a new one."""
    return hashlib.sha256(f"{clinic_id}\x1f{sha256}\x1f{attempt}".encode()).hexdigest()[:16]


def original_name(path: Path, settings: Settings) -> str:
    """The export's own name: a file re-ingested from the archive loses the export-id prefix it was given there."""
    inside_archive = settings.archive.resolve() in path.resolve().parents
    return ARCHIVED_PREFIX.sub("", path.name) if inside_archive else path.name


def _name_max(folder: Path) -> int:
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    try:
        return os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def archive_path(settings: Settings, clinic_id: str, export_id: str, file_name: str, rejected: bool) -> Path:
    """archive/<clinic>/[rejected/]<export_id>__<name>, the name shortened (suffix kept) to fit the filesystem."""
    folder = settings.archive / clinic_id / ("rejected" if rejected else "")
    name = f"{export_id}__{file_name}"
    limit = _name_max(folder)
    if len(name.encode()) <= limit:
        return folder / name
    # the export id keeps shortened names unique; the start of the name and its suffix keep them recognisable
    suffix = Path(file_name).suffix if len(Path(file_name).suffix.encode()) <= 16 else ""
    room = limit - len(f"{export_id}__".encode()) - len("…".encode()) - len(suffix.encode())
    stem = file_name[: len(file_name) - len(suffix)].encode()[:room].decode("utf-8", errors="ignore")
    return folder / f"{export_id}__{stem}…{suffix}"


def _ours(path: Path, settings: Settings) -> bool:
    """Files in the inbox or the rejected archive are moved on; a file from elsewhere is the user's, and stays."""
    real = path.resolve()
    return settings.inbox.resolve() in real.parents or settings.archive.resolve() in real.parents


def archive_bytes(data: bytes | None, path: Path, target: Path, signature: Signature, settings: Settings) -> Path:
    """Archive exactly the bytes that were read; the source leaves the inbox only if it is still those bytes.

    A file appended to after it was read stays in the inbox: the next run sees new bytes and loads the rest.
    A file too large to have been read (``data`` None) is moved, or copied when it is the user's.
    """
    if path.resolve() == target.resolve():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        (shutil.move if _ours(path, settings) else shutil.copy2)(path, target)
        make_private(target)  # a moved file keeps the mode it was dropped with
        return target
    if not (target.is_file() and target.stat().st_size == len(data)):
        partial = target.with_name(f".{target.name.encode()[:200].decode(errors='ignore')}.partial")
        try:
            partial.write_bytes(data)
            os.utime(partial, ns=(signature[1], signature[1]))
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)  # a full disk must not keep half a copy
            raise
    if _ours(path, settings) and file_signature(path) == signature:
        path.unlink(missing_ok=True)
    make_private(target)
    return target
