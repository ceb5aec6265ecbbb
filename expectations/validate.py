"""Run an instrument's suite over rating candidates and return one row per broken rule."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Hashable
from functools import cache, lru_cache
from typing import Any

import polars as pl

from alliance.errors import AllianceError, ConfigError
from alliance.instruments import Instrument
from alliance.redaction import engine_problem
from expectations.suites import suite_path

FAILURES_SCHEMA = {"row_id": pl.Int64, "rule": pl.String}
PART = "__export"  # which export of a batch a row comes from
POSITION = "__position"  # a row's place in the frame GX validates, its pandas index
# GX's context, asset and suites are shared and not thread-safe (the Prefect nightly sweeps clinics on threads)
_ONE_AT_A_TIME = threading.RLock()


@cache
def _batch_definition() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # imported here: ~2 s that only validation needs

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}  # type: ignore[assignment]
    asset = context.data_sources.add_pandas("exports").add_dataframe_asset("ratings")
    return asset.add_batch_definition_whole_dataframe("all")


def warm_up() -> threading.Thread:
    """Import GX and build its context on a background thread (about 2 s, most of it Python's import), so that a
    batch reads and maps its first files meanwhile. Validation waits for it and never builds the context twice;
    a failure here is left for validation to raise with its own message."""

    def build() -> None:
        with _ONE_AT_A_TIME, contextlib.suppress(Exception):
            _batch_definition()

    thread = threading.Thread(target=build, name="alliance-gx-warm-up", daemon=True)
    thread.start()
    return thread


@cache
def _suite(code: str) -> Any:
    from great_expectations.core import ExpectationSuite
    from great_expectations.core.expectation_suite import expectationSuiteSchema

    path = suite_path(code)
    if not path.exists():
        raise ConfigError(f"no expectation suite {path.name} for {code}; run `alliance expectations --write`")
    return ExpectationSuite(**expectationSuiteSchema.load(json.loads(path.read_text(encoding="utf-8"))))


def _columns_of(config: Any) -> list[str]:
    kwargs = config.kwargs
    return list(kwargs.get("column_list") or [kwargs["column"]])


def _runnable(columns: list[str], inst: Instrument) -> tuple[Any, list[str]]:
    """The instrument's suite without rules on columns the export lacks, and the columns the rest read."""
    suite, needed = _runnable_for(tuple(columns), inst.code, frozenset(inst.item_fields))
    return suite, list(needed)


@lru_cache(maxsize=256)
def _runnable_for(columns: tuple[str, ...], code: str, item_fields: frozenset[str]) -> tuple[Any, tuple[str, ...]]:
    # built once per column set: a suite is ~100 GX configurations, and a night asks for one per file
    from great_expectations.core import ExpectationSuite

    full = _suite(code)
    # Only items the clinic's export does not carry may be absent; any other missing column is a bug.
    optional = {f"{field}__raw" for field in item_fields} | set(item_fields)
    absent = {c for e in full.expectations for c in _columns_of(e.configuration)} - set(columns)
    if absent - optional:
        raise AllianceError(f"rating candidates lack column(s) {sorted(absent - optional)}")
    runnable = [e for e in full.expectations if not set(_columns_of(e.configuration)) & absent]
    suite = ExpectationSuite(name=full.name, expectations=[e.configuration for e in runnable])
    return suite, tuple(sorted({"row_id", *(c for e in runnable for c in _columns_of(e.configuration))}))


def _per_part(suite: Any) -> tuple[Any, list[pl.Expr]]:
    """The suite for a frame of several exports, where a row is a duplicate only of a row of its own export,
    and the columns it needs: per multi-column rule, the export, missing where the rule would skip the row
    (GX skips a row whose compared columns are all missing, so the export must not make it compared)."""
    from great_expectations.core import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    configs, columns = [], []
    for number, expectation in enumerate(suite.expectations):
        config = expectation.configuration
        if "column_list" in config.kwargs:
            compared = config.kwargs["column_list"]
            skip = config.kwargs.get("ignore_row_if", "all_values_are_missing")
            missing = [pl.col(c).is_null() for c in compared]
            skipped = (
                pl.all_horizontal(missing) if skip == "all_values_are_missing"
                else pl.any_horizontal(missing) if skip == "any_value_is_missing"
                else pl.lit(False)
            )  # fmt: skip
            name = f"{PART}_{number}"
            columns.append(pl.when(skipped).then(None).otherwise(pl.col(PART)).alias(name))
            config = ExpectationConfiguration(
                type=config.type, kwargs={**config.kwargs, "column_list": [*compared, name]}, meta=config.meta
            )
        configs.append(config)
    return ExpectationSuite(name=suite.name, expectations=configs), columns


NOT_NULL = "expect_column_values_to_not_be_null"
UNIQUE = "expect_compound_columns_to_be_unique"


def _coded(frame: pl.DataFrame, read: dict[str, set[str]]) -> pl.DataFrame:
    """``frame`` with each text column that the suite only checks for missing values or duplicates (``read``: the
    expectation types reading each column) replaced by integer codes, missing where the text is and equal where it
    is: the same failures, from columns pandas filters several times faster, and no client text in GX's hands."""
    text = [
        name
        for name, dtype in frame.schema.items()
        if dtype == pl.String and read.get(name, set()) <= {NOT_NULL, UNIQUE}
    ]
    compared = [name for name in text if UNIQUE in read.get(name, set())]
    # a column only checked for missing values needs no more than whether it is (a rank sorts the text)
    present = [name for name in text if name not in compared]
    return frame.with_columns(
        pl.col(compared).rank("dense"), pl.when(pl.col(present).is_not_null()).then(pl.lit(1, pl.Int8)).name.keep()
    )


def _failures(frame: pl.DataFrame, suite: Any, index: list[str]) -> pl.DataFrame:
    """One GX validation of ``frame``; each broken rule as a row of the ``index`` columns and the rule.

    GX is told each failing row by its position, the frame's named pandas index: it then lists the positions of
    a rule's failing rows as they are, where naming index columns costs two lookups per failing row and column,
    and it keeps no failing values in its results."""
    import pandas as pd  # loaded with GX already; importing it here keeps it off the startup of what never validates

    read: dict[str, set[str]] = {}  # the expectation types reading each column
    for expectation in suite.expectations:
        for column in _columns_of(expectation.configuration):
            read.setdefault(column, set()).add(expectation.configuration.type)
    data = _coded(frame.drop([name for name in index if name not in read]), read).to_pandas()
    data.index = pd.RangeIndex(frame.height, name=POSITION)
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": data})
    result = batch.validate(
        suite,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": [POSITION],
            "exclude_unexpected_values": True,
        },
    )
    positions: list[int] = []
    rules: list[str] = []
    for outcome in result.results:
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            # GX reports engine errors as failed expectations; treating them as bad data would quarantine good rows.
            # the engine's message can quote failing values: only their kind is passed on
            problem = engine_problem(Exception(str(outcome.exception_info.get("exception_message"))), frame.columns)
            raise AllianceError(f"validation engine failed on {outcome.expectation_config.type}: {problem}")
        if outcome.success:
            continue
        rule = outcome.expectation_config.meta["rule"]
        for listed in outcome.result.get("unexpected_index_list") or []:
            positions += listed[POSITION]
            rules += [rule] * len(listed[POSITION])
    found = frame.select(index).cast(pl.Int64)[pl.Series(positions, dtype=pl.Int64)]
    return found.with_columns(pl.Series("rule", rules, dtype=pl.String))


def validate_ratings(candidates: pl.DataFrame, inst: Instrument) -> pl.DataFrame:
    """Failures (row_id, rule) of the instrument's suite; rules on columns the export lacks are skipped.

    Example: a candidate row with srs_goals = 12.5 yields (row_id, "out_of_range:srs_goals").
    """
    if candidates.is_empty():
        return pl.DataFrame(schema=FAILURES_SCHEMA)
    with _ONE_AT_A_TIME:
        suite, needed = _runnable(candidates.columns, inst)
        return _failures(candidates.select(needed), suite, ["row_id"])


def validate_exports(parts: list[pl.DataFrame], inst: Instrument) -> list[pl.DataFrame]:
    """``validate_ratings`` of each export's candidates, from one GX validation per set of columns.

    GX costs about a third of a second per validation whatever its size, so a night of many small exports is
    validated as a few large frames: each row keeps its export (``PART``), duplicates are found within one
    export only, and the failures are handed back per export exactly as a validation of its own would give.
    """
    results = [pl.DataFrame(schema=FAILURES_SCHEMA) for _ in parts]
    with _ONE_AT_A_TIME:
        groups: dict[tuple[str, ...], list[int]] = {}
        for index, part in enumerate(parts):
            if not part.is_empty():
                groups.setdefault(tuple(_runnable(part.columns, inst)[1]), []).append(index)
        for needed, members in groups.items():
            suite, _ = _runnable(list(needed), inst)
            frame = pl.concat(
                [parts[i].select(needed).with_columns(pl.lit(i, pl.Int64).alias(PART)) for i in members],
                how="vertical_relaxed",
            )
            per_part, columns = _per_part(suite)
            failures = _failures(frame.with_columns(columns), per_part, [PART, "row_id"])
            for i, found in failures.partition_by(PART, as_dict=True, include_key=False).items():
                results[int(i[0])] = found
    return results


class Prevalidated:
    """Failures found ahead in one batch (``prime``), handed out when the same candidates are validated again;
    and what the batch read of each file (``keep``), for the file's ingest to take instead of reading it again.

    Called like ``validate_ratings``. A lookup compares the candidates themselves, so a file that changed
    since, or a date check that moved past midnight, is validated afresh rather than served stale.
    """

    def __init__(self) -> None:
        self._found: dict[tuple[str, int, int], list[tuple[pl.DataFrame, pl.DataFrame]]] = {}
        self._kept: dict[Hashable, object] = {}
        self.served = 0  # validations answered from the batch

    def keep(self, token: Hashable, read: object) -> None:
        """Keep what the batch read of one file, for its ingest to take (``take``) instead of reading it again."""
        self._kept[token] = read

    def take(self, token: Hashable) -> object | None:
        """What ``keep`` kept under exactly this token, once; None when the token differs in anything."""
        return self._kept.pop(token, None)

    @staticmethod
    def _key(frame: pl.DataFrame, code: str) -> tuple[str, int, int]:
        return code, frame.height, int(frame.hash_rows(seed=7).cast(pl.Float64).sum())

    @staticmethod
    def _needed(candidates: pl.DataFrame, inst: Instrument) -> list[str]:
        with _ONE_AT_A_TIME:
            return _runnable(candidates.columns, inst)[1]

    def prime(self, batch: list[tuple[pl.DataFrame, Instrument]]) -> None:
        """Validate every export's candidates of the batch: one GX validation per instrument and column set."""
        by_code: dict[str, list[pl.DataFrame]] = {}
        specs = {inst.code: inst for _, inst in batch}
        for candidates, inst in batch:
            if not candidates.is_empty():
                by_code.setdefault(inst.code, []).append(candidates)
        for code, parts in by_code.items():
            inst = specs[code]
            for part, failures in zip(parts, validate_exports(parts, inst), strict=True):
                frame = part.select(self._needed(part, inst))
                self._found.setdefault(self._key(frame, code), []).append((frame, failures))

    def __call__(self, candidates: pl.DataFrame, inst: Instrument) -> pl.DataFrame:
        if not candidates.is_empty():
            frame = candidates.select(self._needed(candidates, inst))
            for seen, failures in self._found.get(self._key(frame, inst.code), []):
                if seen.equals(frame):
                    self.served += 1
                    return failures
        return validate_ratings(candidates, inst)
