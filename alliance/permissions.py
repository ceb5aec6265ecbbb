"""Who may read the home's files: its owner only, and a clinic's OS group its own snapshot.

Everything under the home holds client data or the key to it (warehouse, its WAL, snapshots, archived raw
exports, backups, the pseudonym key), so folders are 0700 and files 0600 whatever the caller's umask. The
one opening is a clinic's ``snapshot_group`` in clinics.toml: its snapshot becomes 0440 owned by that group,
and the home and snapshots folders 0711 (members may pass through to that file, but list nothing).
"""

from __future__ import annotations

import functools
import grp
import logging
import os
import shutil
import stat
import tomllib
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
OWNER_DIR = 0o700
PASS_THROUGH_DIR = 0o711  # group and others may reach a named file inside, never list the folder
OWNER_FILE = 0o600
SNAPSHOT_FILE = 0o400  # snapshots are read-only even to their owner
GROUP_SNAPSHOT_FILE = 0o440


def private_umask() -> None:
    """New files of this process are owner-only (0600, folders 0700), whatever umask it was started with."""
    os.umask(PRIVATE_UMASK)


def make_private(path: Path) -> None:
    """Set an existing file to 0600 or a folder to 0700."""
    path.chmod(OWNER_DIR if path.is_dir() else OWNER_FILE)


def snapshot_groups(clinics_file: Path) -> dict[str, str]:
    """``snapshot_group`` of every clinic in clinics.toml that has one (read without validating profiles)."""
    try:
        text = clinics_file.read_text(encoding="utf-8")
    except OSError:
        return {}  # no clinics.toml yet, or unreadable: the full loader reports it; snapshots stay owner-only
    return dict(_groups_in(text))


@functools.lru_cache(maxsize=4)
def _groups_in(text: str) -> dict[str, str]:
    from alliance.clinics import clinics_toml  # the profiles' own parse, shared

    try:
        raw = clinics_toml(text)
    except tomllib.TOMLDecodeError:
        return {}  # the full loader reports a broken file; snapshots then stay owner-only
    clinics = raw.get("clinics", {})
    return {
        cid: spec["snapshot_group"]
        for cid, spec in clinics.items()
        if isinstance(spec, dict) and isinstance(spec.get("snapshot_group"), str)
    }


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def settle_snapshot(path: Path, group: str | None) -> None:
    """A published snapshot: 0400, or 0440 owned by the clinic's group when it has one on this machine."""
    if group is not None and group_id(group) is not None:
        shutil.chown(path, group=group)
        path.chmod(GROUP_SNAPSHOT_FILE)
        return
    if group is not None:
        log.warning("%s: snapshot_group %r is not a group on this machine; the file stays owner-only", path, group)
    path.chmod(SNAPSHOT_FILE)


def settle_folders(home: Path, shared: bool) -> None:
    """The home and its snapshots folder: 0700, or 0711 when a clinic group must reach its snapshot."""
    for folder in (home, home / "snapshots"):
        if folder.is_dir():
            folder.chmod(PASS_THROUGH_DIR if shared else OWNER_DIR)


def _allowed(path: Path, home: Path, groups: dict[str, str]) -> tuple[int, str | None]:
    """The widest mode a path under the home may have, and the group that may read it (if any)."""
    if path.is_dir():
        pass_through = bool(groups) and path in (home, home / "snapshots")
        return (PASS_THROUGH_DIR if pass_through else OWNER_DIR), None
    if path.parent == home / "snapshots" and path.name.startswith("clinic-") and path.suffix == ".duckdb":
        group = groups.get(path.name.removeprefix("clinic-").removesuffix(".duckdb"))
        return (GROUP_SNAPSHOT_FILE if group else OWNER_FILE), group
    return OWNER_FILE, None


def wide_files(home: Path, groups: dict[str, str]) -> list[str]:
    """Every file or folder under the home whose mode lets more people in than it should, one line each.

    Example: ``wide_files(Path("/srv/alliance"), {})`` → ``["/srv/alliance/warehouse.duckdb: mode 0644 …"]``.
    """
    problems = []
    for clinic, group in sorted(groups.items()):
        if group_id(group) is None:
            problems.append(f"clinic {clinic!r}: snapshot_group {group!r} is not a group on this machine")
    paths = [home, *sorted(home.rglob("*"))] if home.exists() else []
    for path in paths:
        if path.is_symlink():
            continue
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        allowed, reader = _allowed(path, home, groups)
        if mode & ~allowed:
            problems.append(
                f"{path}: mode {mode:04o} is wider than {allowed:04o} ({_who(mode & ~allowed)} may get in); "
                f"run `chmod {allowed:o} {path}`"
            )
        elif reader is not None and mode & 0o070 and info.st_gid != group_id(reader):
            problems.append(f"{path}: readable by group id {info.st_gid}, not the clinic's snapshot_group {reader!r}")
    return problems


def _who(extra: int) -> str:
    found = " and ".join(w for w, bits in (("its group", 0o070), ("other users", 0o007)) if extra & bits)
    return found or "its owner, with more than read and write"
