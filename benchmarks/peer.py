"""The peer: the script an analyst writes by hand for the same exports, to measure the pipeline against.

Per file, pandas reads it as its clinic profile says (delimiter, encoding, decimal comma, date format, sheet,
JSON record path, column renames) and melts it to one row per rating with the instrument's total. Then ONE
Great Expectations call validates the concatenated frame (the pipeline's suite checks in their naive form:
ids and date present, totals inside the instrument's range), the valid ratings go into DuckDB in one append,
and three naive rules run in pandas at each dyad's last session: a total below the instrument's cutoff, a drop
of one SRS point or more since the previous session, and a reliable decrease (Jacobson–Truax, from the data's
own SD and Cronbach's alpha) since the first session. No pseudonyms, quarantine, ledger, snapshots or alerts.
"""

from __future__ import annotations

import json
import math
import os
from datetime import date
from pathlib import Path
from time import perf_counter
from typing import Any

import duckdb
import pandas as pd

from alliance.clinics import Clinic, load_clinics
from alliance.instruments import Instrument, instrument
from alliance.samples import add_profiles
from alliance.settings import load_settings
from benchmarks.report import BenchReport, Verdict
from benchmarks.workload import generate_backfill, new_home, with_alerts

PEER_STAGES = ("read", "validate", "load", "rules")
RELIABLE_Z = 1.96
TARGET_PEER_SPEEDUP = 1.0
AIM_PEER_SPEEDUP = 3.0
KEYS = ("clinic_id", "client_ref", "therapist_id", "instrument")


def _encoding(profile_encoding: str) -> str:
    return {"auto": "utf-8-sig", "utf-8": "utf-8-sig", "cp1252": "cp1252", "utf-16": "utf-16"}[profile_encoding]


def _json_frame(path: Path, records: str | None) -> pd.DataFrame:
    """Nested JSON as json_normalize flattens it, named by the full dotted path the profile uses."""
    document = json.loads(path.read_bytes())
    parts = records.split(".") if records else []
    if len(parts) <= 1:
        frame = pd.json_normalize(document[parts[0]] if parts else document)
        return frame.add_prefix(f"{parts[0]}." if parts else "")
    outer = document[parts[0]]
    meta = sorted({key for item in outer for key, value in item.items() if not isinstance(value, list | dict)})
    frame = pd.json_normalize(outer, record_path=parts[1:], meta=meta, errors="ignore", meta_prefix="\0")
    prefix = ".".join(parts)
    return frame.rename(columns=lambda c: f"{parts[0]}.{c[1:]}" if c.startswith("\0") else f"{prefix}.{c}")


def read_export(path: Path, clinic: Clinic) -> pd.DataFrame:
    """The file as pandas reads it with the profile's settings, columns renamed to the canonical names."""
    profile = clinic.export
    if profile.format == "xlsx":
        import fastexcel  # pandas' calamine engine: the same reader Polars uses

        frame = fastexcel.read_excel(str(path)).load_sheet(profile.sheet or 0).to_pandas()
    elif profile.format == "json":
        frame = _json_frame(path, profile.records)
    else:
        frame = pd.read_csv(
            path,
            sep=None if profile.delimiter == "auto" else profile.delimiter,
            engine="python" if profile.delimiter == "auto" else "c",
            encoding=_encoding(profile.encoding),
            decimal="," if profile.decimal_comma else ".",
            dtype="string",  # typed below, column by column, as the analyst does
        )
    canonical = {_header(vendor): field for vendor, field in profile.columns.items()}
    frame = frame.rename(columns=lambda c: canonical.get(_header(str(c)), c))
    frame = frame[[c for c in dict.fromkeys(profile.columns.values()) if c in frame.columns]]
    if pd.api.types.is_datetime64_any_dtype(frame["session_date"]):
        return frame  # a spreadsheet's date cells arrive as dates
    formats = [profile.date_format] if isinstance(profile.date_format, str) else list(profile.date_format)
    if profile.format == "xlsx":
        formats.append("%Y-%m-%d %H:%M:%S")  # date cells come through the sheet reader as ISO date-times
    raw = frame["session_date"].astype("string")
    dates = pd.to_datetime(raw, format=formats[0], errors="coerce")
    for fmt in formats[1:]:
        dates = dates.fillna(pd.to_datetime(raw, format=fmt, errors="coerce"))
    return frame.assign(session_date=dates)


def _header(name: str) -> str:
    """Vendors change a header's case and spacing between exports: compare them folded."""
    return " ".join(name.split()).casefold()


def ratings_of(frame: pd.DataFrame, clinic: Clinic, source: str) -> pd.DataFrame:
    """One row per session and instrument: its total and its share of the instrument's range."""
    out = []
    for code in clinic.export.instruments:
        inst = instrument(code)
        items = [f"{code.lower()}_{item}" for item in inst.items]
        present = [c for c in items if c in frame.columns]
        if not present:
            continue
        values = frame[present].apply(_numbers, decimal_comma=clinic.export.decimal_comma)
        for item in inst.reverse:
            column = f"{code.lower()}_{item}"
            if column in values:
                values[column] = inst.item_max + inst.item_min - values[column]
        total = values.sum(axis=1, min_count=len(present)) if inst.score == "sum" else values.mean(axis=1)
        rated = values.notna().any(axis=1)  # a session without this instrument is not a rating of it
        part = pd.DataFrame(
            {
                "clinic_id": clinic.id,
                "client_ref": frame["client_ref"].astype("string"),
                "therapist_id": frame["therapist_id"].astype("string"),
                "session_date": frame["session_date"],
                "session_number": pd.to_numeric(frame.get("session_number"), errors="coerce"),
                "instrument": code,
                "total": total,
                "share": (total - inst.total_min) / (inst.total_max - inst.total_min),
                "source": source,
                "line": range(2, len(frame) + 2),
            }
        )[rated]
        prefix = f"{code.lower()}_"
        out.append(part.join(values[rated].rename(columns=lambda c, p=prefix: c.removeprefix(p))))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _numbers(column: pd.Series, decimal_comma: bool) -> pd.Series:
    if decimal_comma and pd.api.types.is_string_dtype(column):
        column = column.str.replace(",", ".", regex=False)
    return pd.to_numeric(column, errors="coerce")


def validate(ratings: pd.DataFrame) -> set[int]:
    """One Great Expectations call over every file's ratings; the row ids that broke a rule."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}  # type: ignore[assignment]
    batch = (
        context.data_sources.add_pandas("peer")
        .add_dataframe_asset("ratings")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": ratings})
    )
    suite = gx.ExpectationSuite(
        name="peer",
        expectations=[
            *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("client_ref", "therapist_id", "session_date")),
            gxe.ExpectColumnValuesToNotBeNull(column="total"),
            gxe.ExpectColumnValuesToBeBetween(column="share", min_value=0, max_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="session_number", min_value=1, max_value=999),
        ],
    )
    result = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row_id"]}
    )
    failed: set[int] = set()
    for outcome in result.results:
        for index in outcome.result.get("unexpected_index_list") or []:
            failed.add(int(index["row_id"] if isinstance(index, dict) else index))
    return failed


def reliable_change(ratings: pd.DataFrame, inst: Instrument) -> float:
    """Jacobson–Truax RC of one instrument's totals: z * SD * sqrt(2 (1 - alpha)), alpha from the items."""
    items = [i for i in inst.items if i in ratings.columns and ratings[i].notna().any()]
    totals = ratings["total"]
    if len(items) < 2 or totals.std() == 0 or math.isnan(totals.std()):
        return math.inf
    alpha = len(items) / (len(items) - 1) * (1 - ratings[items].var().sum() / totals.var())
    return float(RELIABLE_Z * totals.std() * math.sqrt(2 * max(0.0, 1 - alpha)))


def naive_rules(ratings: pd.DataFrame) -> pd.DataFrame:
    """The three rules at each dyad's last session: (dyad keys, rule) per flag."""
    ordered = ratings.sort_values([*KEYS, "session_date", "session_number"])
    grouped = ordered.groupby(list(KEYS), sort=False)["total"]
    ordered = ordered.assign(previous=grouped.shift(1), first=grouped.transform("first"))
    last = ordered.groupby(list(KEYS), sort=False).tail(1)
    flags = []
    for code, rows in last.groupby("instrument"):
        inst = instrument(str(code))
        if inst.construct != "alliance":
            continue
        if inst.cutoff is not None:
            flags.append(rows.loc[rows["total"] < inst.cutoff, list(KEYS)].assign(rule="low_score"))
        flags.append(rows.loc[rows["previous"] - rows["total"] >= inst.srs_point, list(KEYS)].assign(rule="drop"))
        rc = reliable_change(ordered[ordered["instrument"] == code], inst)
        flags.append(rows.loc[rows["first"] - rows["total"] >= rc, list(KEYS)].assign(rule="reliable_decrease"))
    return pd.concat(flags, ignore_index=True) if flags else pd.DataFrame(columns=[*KEYS, "rule"])


def run_peer(files: list[Path], clinics: dict[str, Clinic], database: Path) -> dict[str, Any]:
    """Read, validate, load and flag the files; seconds per stage and what was done."""
    seconds = dict.fromkeys(PEER_STAGES, 0.0)
    start = perf_counter()
    parts, rows = [], 0
    for path in files:
        clinic = clinics[path.parent.name]
        frame = read_export(path, clinic)
        rows += len(frame)
        parts.append(ratings_of(frame, clinic, path.name))
    ratings = pd.concat(parts, ignore_index=True)
    ratings.insert(0, "row_id", range(len(ratings)))
    seconds["read"] = perf_counter() - start
    mark = perf_counter()
    failed = validate(ratings)
    valid = ratings[~ratings["row_id"].isin(failed)]
    seconds["validate"] = perf_counter() - mark
    mark = perf_counter()
    database.unlink(missing_ok=True)
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE ratings AS SELECT * FROM valid")
        con.execute("CHECKPOINT")
        seconds["load"] = perf_counter() - mark
        mark = perf_counter()
        flags = naive_rules(valid)
        con.execute("CREATE TABLE flags AS SELECT * FROM flags")
        loaded = con.execute("SELECT count(*) FROM ratings").fetchall()[0][0]
    seconds["rules"] = perf_counter() - mark
    return {
        "wall_s": perf_counter() - start,
        "stages": seconds,
        "rows": rows,
        "ratings": len(ratings),
        "failed": len(failed),
        "loaded": int(loaded),
        "flags": {str(k): int(v) for k, v in flags["rule"].value_counts().items()},
    }


def peer_main(spec: dict[str, Any], baseline_mb: float) -> None:
    """The peer in the benchmark's child process: its figures, peak memory and CPU into spec['out']."""
    from benchmarks.child import cpu_s, rss_mb

    clinics = load_clinics(load_settings(Path(spec["home"])).clinics_file)
    out = run_peer([Path(p) for p in spec["files"]], clinics, Path(spec["out"]).with_name("peer.duckdb"))
    out |= {"peak_rss_mb": rss_mb(), "baseline_rss_mb": baseline_mb, "cpu_s": cpu_s()}
    Path(spec["out"]).write_text(json.dumps(out))


def side_by_side(report: BenchReport, root: Path, alert_url: str, profile: bool) -> None:
    """Our pipeline (`alliance ingest` of every file into an empty warehouse) and the peer, on the same exports."""
    from benchmarks.child import run_child
    from benchmarks.scenarios import timed_run

    started = perf_counter()
    files, profiles = generate_backfill(root / "src", report.scale, date.fromisoformat(report.today))
    generate_s = perf_counter() - started
    settings = new_home(root)
    add_profiles(settings.clinics_file, with_alerts(profiles, alert_url))
    label = f"our pipeline, `alliance ingest` of {len(files)} exports"
    ours = timed_run(label, root / "ours", settings, "ingest", files, 0, generate_s, 0.0, profile)
    (root / "peer").mkdir()
    theirs = run_child(root / "peer", settings.home, "peer", [f.source for f in files], False)
    report.runs.append(ours)
    report.figures |= {
        "peer wall s": theirs["wall_s"],
        "peer stages s": theirs["stages"],
        "peer rows / ratings / failed GX / loaded": [theirs["rows"], theirs["ratings"], theirs["failed"],
                                                      theirs["loaded"]],
        "peer flags (dyads at their last session)": theirs["flags"],
        "peer peak RSS MB": theirs["peak_rss_mb"],
        "ours wall s": ours.wall_s,
        "ours ratings (new / quarantined)": [ours.ratings, ours.ratings_new, ours.ratings_quarantined],
    }  # fmt: skip
    speedup = theirs["wall_s"] / ours.wall_s if ours.wall_s else 0.0
    report.verdicts.append(
        Verdict(
            f"at least as fast as the pandas + GX peer (aim {AIM_PEER_SPEEDUP:g}×)",
            f"ours {ours.wall_s:.1f} s vs peer {theirs['wall_s']:.1f} s on {ours.rows:,} rows",
            speedup,
            "× the peer's speed",
            speedup >= TARGET_PEER_SPEEDUP,
        )
    )
