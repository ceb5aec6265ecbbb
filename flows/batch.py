"""A batch's loads in one transaction: files admitted one by one as ``ingest_file`` reads, checks and prepares
them, then loaded together, each with its own ledger row, counts, pending dyads and archive move.

A night of 5,000 small files paid a load (about ten statements) and a commit per file; a batch pays them once
per ``LOAD_FILES`` files. What file-by-file ingests would leave is kept: a later file's value of a rating
replaces an earlier one's (``LedgerTables.load_exports``), the same bytes twice load once, a therapist a file
brings is known to the files after it, and a failure in the batch's load loads each file on its own, so one
file is rejected and the others load. A crash before the commit leaves every file in its inbox; after it,
each file's re-run finds its bytes loaded and only archives it.
"""

from __future__ import annotations

import logging
from dataclasses import fields

import polars as pl

from alliance.errors import AllianceError, ExportGone
from alliance.faults import crash_point, fault_point
from alliance.settings import Settings
from alliance.storage import ExportLoad, Warehouse, Writer, is_storage_failure
from alliance.storage.lease import current
from flows.archive import archive_bytes
from flows.pipeline import Admitted, ExportResult, _loaded, ingest_file
from flows.watcher import file_signature
from transforms.quarantine import KnownTherapists

log = logging.getLogger("alliance.pipeline")

LOAD_FILES = 200  # files loaded in one transaction: statements and commits shared, the lock held seconds
LOAD_BYTES = 128_000_000  # or fewer, when their bytes (kept to archive them) reach this: 256 MB was 0.6 GB more


class LoadBatch:
    """Loads deferred by ``ingest_file(..., batch=...)`` until ``flush``; use within a ``writer_lease``.

    Example: ``with writer_lease(w): batch = LoadBatch(settings); [ingest_file(p, settings, batch=batch) for p in
    paths]; batch.flush()``. Each ``ingest_file`` returns the file's result at once; a deferred one has status
    ``pending`` until the flush fills it in.
    """

    def __init__(self, settings: Settings) -> None:
        if current(settings.warehouse) is None:
            raise AllianceError("a load batch needs a writer lease (alliance.storage.writer_lease)")
        self.settings = settings
        self._waiting: list[tuple[Admitted, ExportResult]] = []
        self._bytes: set[tuple[str, str]] = set()  # (clinic_id, sha256) of the files waiting
        self._held = 0  # their bytes
        self._pairs: list[pl.DataFrame] = []  # (clinic_id, therapist_id) of their ratings
        self._known: KnownTherapists | None = None  # the warehouse's and theirs

    def holds(self, clinic_id: str, sha256: str) -> bool:
        """Whether these bytes of this clinic wait in the batch already."""
        return (clinic_id, sha256) in self._bytes

    def known_therapists(self, writer: Writer) -> pl.DataFrame:
        """The warehouse's (clinic, therapist) pairs and those of the files waiting: what a file sees once the
        files before it loaded."""
        stored = writer.known_therapists()
        if not self._pairs:
            return stored
        return pl.concat([stored, *self._pairs], how="vertical_relaxed").unique()

    def therapists(self, writer: Writer) -> KnownTherapists:
        """``known_therapists`` as an index, built once per batch and kept up to date as files wait."""
        if self._known is None:
            self._known = KnownTherapists(self.known_therapists(writer))
        return self._known

    def defer(self, admitted: Admitted) -> ExportResult:
        result = ExportResult(admitted.source.name, admitted.ledger.clinic_id, "pending", admitted.ledger.export_id)
        self._waiting.append((admitted, result))
        self._bytes.add((admitted.ledger.clinic_id, admitted.ledger.sha256))
        self._held += admitted.ledger.bytes
        ratings = admitted.prepared.ratings
        if ratings.height:
            pairs = ratings.select("clinic_id", "therapist_id").unique()
            self._pairs.append(pairs)
            if self._known is not None:
                self._known.add(pairs)
        if len(self._waiting) >= LOAD_FILES or self._held >= LOAD_BYTES:
            self.flush()
        return result

    def flush(self) -> None:
        """Load every waiting file: together in one transaction, else each on its own, in order, as a lone file
        (when one changed or was taken since its admission, or the load failed: the files after it may have been
        prepared with what it brought)."""
        waiting, self._waiting, self._bytes, self._held = self._waiting, [], set(), 0
        self._pairs, self._known = [], None  # the writer knows the loaded pairs, or forgot them on a failure
        if not waiting:
            return
        try:
            try:
                together = self._load(waiting)
            except Exception as exc:  # the warehouse's own failure (disk, I/O): its session is closed
                if not is_storage_failure(exc):
                    raise
                log.warning("%d files failed to load together (%s); loading each on its own", len(waiting),
                            type(exc).__name__)  # fmt: skip
                together = False
            if not together:
                for admitted, result in waiting:
                    _fill(result, self._alone(admitted, result))
        except BaseException as exc:
            for _, result in waiting:
                if result.status == "pending":
                    _fill(result, _failed(result, exc))
            raise

    def _load(self, waiting: list[tuple[Admitted, ExportResult]]) -> bool:
        """Load the files in one transaction and archive them; False, with nothing loaded, when one changed,
        was taken or was loaded by another run since its admission, or when the load failed."""
        settings = self.settings
        with Warehouse.of(settings).writer() as writer:
            rows = writer.ledger_rows_of(sorted({a.ledger.sha256 for a, _ in waiting}))
            for admitted, _ in waiting:
                seen = rows.get((admitted.ledger.clinic_id, admitted.ledger.sha256), (0, 0))
                if file_signature(admitted.source.path) != admitted.source.signature or seen != (admitted.attempts, 0):
                    return False
            loads = [
                ExportLoad(a.ledger, a.prepared.ratings, a.prepared.quarantine, a.prepared.client_refs)
                for a, _ in waiting
            ]
            try:
                with writer.transaction():
                    counts = writer.load_exports(loads)
                    for admitted, _ in waiting:
                        fault_point("load", admitted.ledger.file_name)
                    # scored in one pass at the batch's end (settle_scores)
                    writer.mark_pending([(a.ledger.export_id, a.ledger.clinic_id, list(count.touched_dyads))
                                         for (a, _), count in zip(waiting, counts, strict=True)])  # fmt: skip
            except Exception as exc:  # rolled back
                if is_storage_failure(exc):
                    raise
                log.warning("%d files failed to load together (%s); loading each on its own", len(waiting),
                            type(exc).__name__)  # fmt: skip
                return False
            crash_point("after_commit")
            crash_point("after_publish")  # a batch publishes at its end, as a file of a sweep does
            for (admitted, result), count in zip(waiting, counts, strict=True):
                source, ledger = admitted.source, admitted.ledger
                try:
                    archive_bytes(source.data, source.path, admitted.target, source.signature, settings)
                except Exception as exc:  # loaded: the next run finds its bytes and archives it
                    log.warning("%s (clinic %s): loaded, not archived (%s)", source.name, ledger.clinic_id,
                                type(exc).__name__)  # fmt: skip
                    error = f"loaded, but not archived ({type(exc).__name__}); the next run archives it"
                    _fill(result, ExportResult(source.name, ledger.clinic_id, "failed", ledger.export_id, error=error))
                    continue
                _fill(result, _loaded(source.name, ledger, admitted.prepared, count, admitted.target, None))
        return True

    def _alone(self, admitted: Admitted, result: ExportResult) -> ExportResult:
        """One file of a batch that could not load together, ingested afresh as a lone file of a sweep."""
        try:
            return ingest_file(
                admitted.source.path, self.settings, admitted.clinic.id, admitted.ledger.received_at, publish=False,
                in_batch=True,
            )  # fmt: skip
        except ExportGone as gone:
            return ExportResult(result.file_name, result.clinic_id, "taken", "", error=str(gone))
        except Exception as exc:
            return _failed(result, exc)


def _failed(result: ExportResult, exc: BaseException) -> ExportResult:
    error = str(exc) if isinstance(exc, AllianceError) else f"unexpected {type(exc).__name__}; left in place"
    return ExportResult(result.file_name, result.clinic_id, "failed", "", error=error)


def _fill(result: ExportResult, final: ExportResult) -> None:
    """The deferred result becomes the final one (callers hold the object ``defer`` returned)."""
    for field in fields(ExportResult):
        setattr(result, field.name, getattr(final, field.name))
