"""Fixed costs of a network's nightly sweep that do not depend on rows: inbox listings, clinic profiles, groups.

Run: ``python -m benchmarks.sweep_costs --clinics 1000 --files 5``. It builds a home with that many clinics
(profiles in clinics.toml, empty files in each inbox) and times, in this process:

- listing: every clinic's sweep listing the whole network's inboxes and keeping its own (the per-clinic
  tasks before) against each listing only its own folder (``inbox_files(settings, clinic_id)``); the floor is
  one ``os.scandir`` per clinic folder;
- profiles: ``load_clinics`` as every ingest calls it, its first (parsing) call against a repeated call on the
  same text (parsed once per process), and the floor of reading the file;
- snapshot groups: ``snapshot_groups`` as every file's writer session asks for them (``Warehouse.of``), its
  first (parsing) call against a repeated one on the same text.

Prints seconds for the whole night and ratios. No file is read or ingested.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from alliance.clinics import load_clinics
from alliance.home import init_home
from alliance.permissions import snapshot_groups
from alliance.samples import add_profiles
from alliance.settings import load_settings
from flows.pipeline import inbox_files

PROFILE = {
    "format": "csv",
    "date_format": "%m/%d/%Y",
    "instruments": ["SRS"],
    "columns": {
        "Client ID": "client_ref", "Clinician": "therapist_id", "Session Date": "session_date",
        "Session #": "session_number", "SRS Total": "srs_total",
    },
}  # fmt: skip


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinics", type=int, default=1000)
    parser.add_argument("--files", type=int, default=5, help="files per clinic inbox")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(Path(folder) / "home")
        init_home(settings)
        ids = [f"c{i:04d}" for i in range(args.clinics)]
        add_profiles(settings.clinics_file, {c: {"name": c, "timezone": "UTC", "export": PROFILE} for c in ids})
        for clinic in ids:
            (settings.inbox / clinic).mkdir(parents=True, exist_ok=True)
            for n in range(args.files):
                (settings.inbox / clinic / f"export_{n}.csv").write_text("x\n")

        def listing_after() -> None:
            for clinic in ids:
                inbox_files(settings, clinic)

        def listing_floor() -> None:
            for clinic in ids:
                list(os.scandir(settings.inbox / clinic))

        sample = ids[: min(len(ids), 50)]  # the network-wide listing per clinic is timed on a sample, then scaled
        before = _seconds(lambda: [inbox_files(settings) for _ in sample]) * len(ids) / len(sample)
        after, floor = _seconds(listing_after), _seconds(listing_floor)
        print(f"listing, {args.clinics} clinics × {args.files} files: before {before:.2f} s (est. from "
              f"{len(sample)} sweeps), after {after:.2f} s, floor {floor:.2f} s; after/floor "
              f"{after / floor:.1f}×, before/after {before / after:.0f}×")  # fmt: skip
        files = args.clinics * args.files
        first = _seconds(lambda: load_clinics(settings.clinics_file))
        again = _seconds(lambda: [load_clinics(settings.clinics_file) for _ in range(100)]) / 100
        read = _seconds(lambda: [settings.clinics_file.read_text() for _ in range(100)]) / 100
        print(f"profiles, {args.clinics} clinics: first load {first:.3f} s, each later load {again * 1e3:.2f} ms "
              f"(reading the file alone {read * 1e3:.2f} ms); for {files} files: before est. {first * files:.0f} s, "
              f"after {first + again * (files - 1):.1f} s")  # fmt: skip
        # every file's writer session asks for the snapshot groups (Warehouse.of)
        groups_first = _seconds(lambda: snapshot_groups(settings.clinics_file))
        groups_again = _seconds(lambda: [snapshot_groups(settings.clinics_file) for _ in range(100)]) / 100
        print(f"snapshot groups, {args.clinics} clinics: first read {groups_first:.3f} s, each later read "
              f"{groups_again * 1e3:.2f} ms; for {files} files: before est. {groups_first * files:.0f} s, after "
              f"{groups_first + groups_again * (files - 1):.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
