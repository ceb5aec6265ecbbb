"""Backup and restore of a home: the warehouse, clinics.toml and the pseudonym key, with a checked manifest."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from alliance.errors import AllianceError
from alliance.permissions import make_private, private_umask
from alliance.readers import sha256_of
from alliance.settings import Settings
from alliance.storage import SCHEMA_VERSION, Warehouse

MANIFEST = "manifest.json"


def backup(settings: Settings, destination: Path) -> Path:
    """Write ``destination/alliance-backup-<UTC time>/`` and return it.

    Example: ``backup(settings, Path("/mnt/backups"))``. The folder holds the pseudonym key: keep it as
    safe as the key itself (it is written readable by its owner only).
    """
    if not settings.warehouse.exists():
        raise AllianceError(f"{settings.warehouse}: no warehouse to back up")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    private_umask()
    folder = destination / f"alliance-backup-{stamp}"
    folder.mkdir(parents=True)
    folder.chmod(0o700)
    tables = Warehouse.of(settings).copy_to(folder / "warehouse.duckdb")
    shutil.copy2(settings.clinics_file, folder / "clinics.toml")
    if settings.key_file.exists():
        shutil.copy2(settings.key_file, folder / "pseudonym.key")
        (folder / "pseudonym.key").chmod(0o600)
    for path in folder.iterdir():
        make_private(path)  # copies keep their source's mode: a backup is as private as the home
    files = {p.name: sha256_of(p) for p in sorted(folder.iterdir())}
    manifest = {
        "created_at": stamp,
        "schema_version": SCHEMA_VERSION,
        "files": files,
        "tables": {name: list(value) for name, value in tables.items()},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


def restore(settings: Settings, folder: Path, force: bool = False) -> dict[str, list[object]]:
    """Restore a backup into the home, checking every file and every table against the manifest."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise AllianceError(f"{folder}: not an Alliance Watch backup (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name, digest in manifest["files"].items():
        if not (folder / name).exists() or sha256_of(folder / name) != digest:
            raise AllianceError(f"{folder / name}: missing or changed since the backup was made; not restoring")
    if settings.warehouse.exists() and not force:
        raise AllianceError(f"{settings.warehouse} exists; pass --force to replace it with the backup")
    settings.home.mkdir(parents=True, exist_ok=True)
    tables = Warehouse.of(settings).replace_with(folder / "warehouse.duckdb")
    restored = {name: list(value) for name, value in tables.items()}
    if restored != manifest["tables"]:
        differing = sorted(k for k in manifest["tables"] if restored.get(k) != manifest["tables"][k])
        raise AllianceError(f"restored tables differ from the backup's checksums: {', '.join(differing)}")
    shutil.copy2(folder / "clinics.toml", settings.clinics_file)
    make_private(settings.clinics_file)
    if (folder / "pseudonym.key").exists() and settings.hmac_key is None:
        partial = settings.key_file.with_name(".pseudonym.key.restoring")
        shutil.copy2(folder / "pseudonym.key", partial)
        partial.chmod(0o600)
        os.replace(partial, settings.key_file)
    return restored
