"""Run an instrument's suite over rating candidates and return one row per broken rule."""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

import polars as pl

from alliance.errors import AllianceError, ConfigError
from alliance.instruments import Instrument
from alliance.redaction import engine_problem
from expectations.suites import suite_path

FAILURES_SCHEMA = {"row_id": pl.Int64, "rule": pl.String}


@cache
def _batch_definition() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # imported here: ~2 s that only validation needs

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}  # type: ignore[assignment]
    asset = context.data_sources.add_pandas("exports").add_dataframe_asset("ratings")
    return asset.add_batch_definition_whole_dataframe("all")


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


def validate_ratings(candidates: pl.DataFrame, inst: Instrument) -> pl.DataFrame:
    """Failures (row_id, rule) of the instrument's suite; rules on columns the export lacks are skipped.

    Example: a candidate row with srs_goals = 12.5 yields (row_id, "out_of_range:srs_goals").
    """
    if candidates.is_empty():
        return pl.DataFrame(schema=FAILURES_SCHEMA)
    from great_expectations.core import ExpectationSuite

    full = _suite(inst.code)
    # Only items the clinic's export does not carry may be absent; any other missing column is a bug.
    optional = {f"{field}__raw" for field in inst.item_fields} | set(inst.item_fields)
    absent = {c for e in full.expectations for c in _columns_of(e.configuration)} - set(candidates.columns)
    if absent - optional:
        raise AllianceError(f"rating candidates lack column(s) {sorted(absent - optional)}")
    runnable = [e for e in full.expectations if not set(_columns_of(e.configuration)) & absent]
    suite = ExpectationSuite(name=full.name, expectations=[e.configuration for e in runnable])
    needed = sorted({"row_id", *(c for e in runnable for c in _columns_of(e.configuration))})
    frame = candidates.select(needed).to_pandas()
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row_id"]},
    )
    row_ids: list[int] = []
    rules: list[str] = []
    for outcome in result.results:
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            # GX reports engine errors as failed expectations; treating them as bad data would quarantine good rows.
            # the engine's message can quote failing values: only their kind is passed on
            problem = engine_problem(Exception(str(outcome.exception_info.get("exception_message"))), needed)
            raise AllianceError(f"validation engine failed on {outcome.expectation_config.type}: {problem}")
        if outcome.success:
            continue
        rule = outcome.expectation_config.meta["rule"]
        for hit in outcome.result.get("unexpected_index_list") or []:
            row_ids.append(int(hit["row_id"]))
            rules.append(rule)
    return pl.DataFrame({"row_id": row_ids, "rule": rules}, schema=FAILURES_SCHEMA)
