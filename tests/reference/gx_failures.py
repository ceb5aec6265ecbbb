"""GX's failing rows as first read (the index columns named to GX, two lookups per failing row and column), kept
unchanged as the oracle of ``expectations.validate._failures`` (test_gx_oracle.py)."""

from __future__ import annotations

from typing import Any

import polars as pl

from expectations.validate import _batch_definition


def failures(frame: pl.DataFrame, suite: Any, index: list[str]) -> pl.DataFrame:
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index})
    hits: dict[str, list[object]] = {name: [] for name in (*index, "rule")}
    for outcome in result.results:
        assert not (outcome.exception_info and outcome.exception_info.get("raised_exception"))
        if outcome.success:
            continue
        rule = outcome.expectation_config.meta["rule"]
        for hit in outcome.result.get("unexpected_index_list") or []:
            for name in index:
                hits[name].append(int(hit[name]))
            hits["rule"].append(rule)
    return pl.DataFrame(hits, schema={**dict.fromkeys(index, pl.Int64), "rule": pl.String})
