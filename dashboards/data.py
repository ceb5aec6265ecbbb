"""Dashboard queries: pure functions from a storage Reader (or a frame) to polars frames, no Streamlit."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from alliance.clinics import RuleConfig
from alliance.instruments import instrument, registry
from alliance.storage import CURRENT_FLAG, CURRENT_FLAG_ID, Reader, Warehouse
from transforms.rules import Thresholds
from transforms.trends import CHART_SCHEMA, chart_frame, weekly_alliance, weekly_flagged_share

SEVERITIES = ("advisory", "low", "medium", "high", "critical")
QUEUE_STATUSES = ("open", "acknowledged")
ALLIANCE_CODES = tuple(code for code, spec in registry().items() if spec.construct == "alliance")
ACTIVE_DAYS = 56  # the views' "active dyad": a session in the clinic's last 8 weeks


class NoSnapshot(Exception):
    """A clinic dashboard whose clinic has no published snapshot yet."""


def _scope(clinic_id: str | None, column: str = "clinic_id") -> tuple[str, dict[str, Any]]:
    """A WHERE fragment limiting rows to one clinic (all when None), as a second guard beside the snapshot."""
    if clinic_id is None:
        return "TRUE", {}
    return f"{column} = $clinic", {"clinic": clinic_id}


def snapshot_stamp(warehouse: Warehouse, clinic_id: str | None) -> tuple[str, int, int]:
    """What the dashboard would read and its identity (path, mtime, inode); a new snapshot gives a new stamp."""
    for path in (warehouse.snapshot_path(clinic_id), warehouse.path):
        if path.exists():
            stat = path.stat()
            return str(path), stat.st_mtime_ns, stat.st_ino
        if clinic_id is not None:
            break  # a clinic dashboard never falls back to the working file of every clinic
    return "", 0, 0


@contextmanager
def open_reader(home: Path, clinic_id: str | None) -> Iterator[Reader]:
    """A read-only Reader on the clinic's snapshot (network one when None); a clinic never gets the network file."""
    warehouse = Warehouse(home / "warehouse.duckdb")
    if clinic_id is not None and not warehouse.snapshot_path(clinic_id).exists():
        raise NoSnapshot(f"no published snapshot for clinic {clinic_id!r} yet")
    with warehouse.reader(clinic_id) as reader:
        yield reader


def queue_min_risk(reader: Reader, default: float = 30.0) -> float:
    """The queue threshold the warehouse was scored with (meta), else the default."""
    found = reader.frame("SELECT value FROM meta WHERE key = 'queue_min_risk'")
    return float(found.item()) if found.height else default


def clinic_ids(reader: Reader) -> list[str]:
    """Clinics with data in this snapshot."""
    return reader.frame("SELECT DISTINCT clinic_id FROM exports ORDER BY 1")["clinic_id"].to_list()


def load_queue(reader: Reader, clinic_id: str | None = None) -> pl.DataFrame:
    """The review queue (open and acknowledged flags of queued dyads), most urgent first, as the view ranks it."""
    where, params = _scope(clinic_id)
    return reader.frame(
        f"""SELECT flag_id, clinic_id, therapist_id, dyad_id, instrument, rule, severity, status,
                   round(risk_score, 1) AS risk_score, reason, provisional, last_session, last_session_date,
                   first_flagged_at, age_days
            FROM review_queue WHERE {where}""",
        params,
    ).with_row_index("rank", offset=1)


def has_client_refs(reader: Reader) -> bool:
    """Whether this snapshot carries client references (only a clinic's own snapshot does)."""
    found = reader.frame(
        "SELECT 1 FROM duckdb_tables() WHERE table_name = 'client_refs' AND database_name = current_database()"
    )
    return found.height > 0


def load_cases(reader: Reader, clinic_id: str | None = None) -> pl.DataFrame:
    """Open and acknowledged cases, one row per dyad at risk, most urgent first; ``client_ref`` from a clinic's
    own snapshot only (null in the network view)."""
    where, params = _scope(clinic_id, "q.clinic_id")
    refs = clinic_id is not None and has_client_refs(reader)
    ref = "r.client_ref" if refs else "NULL::VARCHAR"
    join = "LEFT JOIN client_refs r ON r.clinic_id = c.clinic_id AND r.client_id = c.client_id" if refs else ""
    return reader.frame(
        f"""SELECT q.case_id, q.clinic_id, q.therapist_id, q.dyad_id, {ref} AS client_ref, q.status, q.severity,
                   round(q.risk_score, 1) AS risk_score, q.headline_rule, q.headline_reason, q.rules, q.flags,
                   q.change, q.change_session_date, q.opened_session_date, q.last_session_date, q.age_days
            FROM case_queue q JOIN cases c USING (case_id) {join}
            WHERE {where}
            ORDER BY q.risk_score DESC, list_position({list(SEVERITIES)}, q.severity) DESC,
                     q.last_session_date DESC, q.case_id""",
        params,
    ).with_row_index("rank", offset=1)


def filter_cases(
    cases: pl.DataFrame,
    therapists: Sequence[str] = (),
    rules: Sequence[str] = (),
    severities: Sequence[str] = (),
    statuses: Sequence[str] = (),
    dyad: str = "",
) -> pl.DataFrame:
    """Cases narrowed by the queue's filters: a rule matches a case with it among its rules; the search matches
    the dyad code or (in a clinic's view) the client reference."""
    out = filter_queue(cases.drop("rules"), therapists, (), severities, statuses).join(
        cases.select("case_id", "rules"), on="case_id", how="left", maintain_order="left"
    )
    if rules:
        out = out.filter(pl.col("rules").list.eval(pl.element().is_in(list(rules))).list.any())
    needle = dyad.strip().lower()
    if needle:
        ref = pl.col("client_ref").fill_null("").str.to_lowercase()
        out = out.filter(pl.col("dyad_id").str.contains(needle, literal=True) | ref.str.contains(needle, literal=True))
    return out.select(cases.columns)


def case_detail(reader: Reader, case_id: str, clinic_id: str | None = None) -> dict[str, Any] | None:
    """One case (any status) with its client reference in a clinic's own snapshot, or None when not in scope."""
    where, params = _scope(clinic_id, "c.clinic_id")
    refs = clinic_id is not None and has_client_refs(reader)
    ref = "r.client_ref" if refs else "NULL::VARCHAR"
    join = "LEFT JOIN client_refs r ON r.clinic_id = c.clinic_id AND r.client_id = c.client_id" if refs else ""
    found = reader.frame(
        f"""SELECT c.* EXCLUDE (client_id), {ref} AS client_ref FROM cases c {join}
            WHERE c.case_id = $case AND {where}""",
        {**params, "case": case_id},
    )
    return found.row(0, named=True) if found.height else None


def case_flags(reader: Reader, case_id: str, clinic_id: str | None = None) -> pl.DataFrame:
    """The flags behind a case (its evidence), most severe first, each with its reason."""
    where, params = _scope(clinic_id, "f.clinic_id")
    return reader.frame(
        f"""SELECT f.rule, f.severity, f.status, f.instrument, f.first_session_date, f.last_session_date, f.reason,
                   f.flag_id
            FROM cases c, unnest(c.flag_ids) AS u(flag_id) JOIN flags f ON f.flag_id = u.flag_id
            WHERE c.case_id = $case AND {where}
            ORDER BY list_position({list(SEVERITIES)}, f.severity) DESC, f.last_session_date DESC, f.rule""",
        {**params, "case": case_id},
    )


def case_history(reader: Reader, case_id: str, clinic_id: str | None = None) -> pl.DataFrame:
    """The review actions on a case, newest first, with how many flags each covered (notes blank in the network
    snapshot)."""
    where, params = _scope(clinic_id)
    return reader.frame(
        f"""SELECT reviewed_at, reviewed_by, from_status, to_status, len(flag_ids) AS flags_covered, note
            FROM case_reviews WHERE case_id = $case AND {where} ORDER BY reviewed_at DESC""",
        {**params, "case": case_id},
    )


def out_of_control(trend: pl.DataFrame, recent_weeks: int = 4) -> pl.DataFrame:
    """Series whose EWMA left its limits in the worrying direction (alliance down, flagged share up) in their
    last ``recent_weeks`` weeks, the most signals first: clinic, level, therapist, instrument, metric, signals."""
    keys = ["clinic_id", "level", "therapist_id", "instrument", "metric"]
    worrying = pl.when(pl.col("metric") == "flagged_share").then(pl.lit("high")).otherwise(pl.lit("low"))
    recent = trend.filter(pl.col("week") > pl.col("week").max().over(keys) - pl.duration(weeks=recent_weeks))
    return (
        recent.filter(pl.col("signal") == worrying)
        .group_by(keys)
        .agg(pl.len().alias("signals"), pl.col("week").max().alias("last_signal"))
        .sort(["signals", "last_signal", "clinic_id", "therapist_id"], descending=[True, True, False, False],
              nulls_last=True)
    )  # fmt: skip


def filter_queue(
    queue: pl.DataFrame,
    therapists: Sequence[str] = (),
    rules: Sequence[str] = (),
    severities: Sequence[str] = (),
    statuses: Sequence[str] = (),
    dyad: str = "",
) -> pl.DataFrame:
    """The queue narrowed by the supervisor's filters; an empty selection means no filter on that column."""
    out = queue
    for column, chosen in (
        ("therapist_id", therapists),
        ("rule", rules),
        ("severity", severities),
        ("status", statuses),
    ):
        if chosen:
            out = out.filter(pl.col(column).is_in(list(chosen)))
    needle = dyad.strip().lower()
    if needle:
        out = out.filter(pl.col("dyad_id").str.contains(needle, literal=True))
    return out


def one_per_dyad(queue: pl.DataFrame) -> pl.DataFrame:
    """One row per dyad (its top-ranked flag) with how many flags it has, keeping the queue's order."""
    counts = queue.group_by("dyad_id").agg(pl.len().alias("flags"))
    return queue.unique("dyad_id", keep="first", maintain_order=True).join(counts, on="dyad_id", how="left")


def page_of(frame: pl.DataFrame, page: int, size: int) -> pl.DataFrame:
    """Rows of one 1-based page."""
    return frame.slice(max(page - 1, 0) * size, size)


def page_count(rows: int, size: int) -> int:
    """Pages needed for this many rows (at least 1)."""
    return max(1, math.ceil(rows / size))


def dyad_options(reader: Reader, clinic_id: str | None = None) -> pl.DataFrame:
    """Every dyad in scope, riskiest first, for the dyad picker."""
    where, params = _scope(clinic_id)
    return reader.frame(
        f"""SELECT dyad_id, clinic_id, therapist_id, round(risk_score, 1) AS risk_score, in_queue, sessions
            FROM dyads WHERE {where} ORDER BY risk_score DESC, dyad_id""",
        params,
    )


def dyad_summary(reader: Reader, dyad_id: str, clinic_id: str | None = None) -> dict[str, Any] | None:
    """The dyad's row of the dyads table (no client id; the client reference in a clinic's own snapshot), or None
    when it is not in scope."""
    where, params = _scope(clinic_id, "d.clinic_id")
    refs = clinic_id is not None and has_client_refs(reader)
    ref = "r.client_ref" if refs else "NULL::VARCHAR"
    join = "LEFT JOIN client_refs r ON r.clinic_id = d.clinic_id AND r.client_id = d.client_id" if refs else ""
    found = reader.frame(
        f"""SELECT d.dyad_id, d.clinic_id, d.therapist_id, {ref} AS client_ref, d.instruments, d.sessions,
                   d.first_session_date, d.last_session_date, round(d.risk_score, 1) AS risk_score, d.ongoing_rules,
                   d.in_queue
            FROM dyads d {join} WHERE d.dyad_id = $dyad AND {where}""",
        {**params, "dyad": dyad_id},
    )
    return found.row(0, named=True) if found.height else None


def trajectory(reader: Reader, dyad_id: str, clinic_id: str | None = None) -> pl.DataFrame:
    """The dyad's scored sessions with the band half-width the rupture rule uses (larger of own and typical SD)."""
    where, params = _scope(clinic_id, "s.clinic_id")
    return reader.frame(
        f"""WITH cal AS (
                SELECT instrument, within_sd FROM calibrations
                QUALIFY row_number() OVER (PARTITION BY instrument ORDER BY estimated_at DESC) = 1)
            SELECT s.instrument, s.session_index, s.session_number, s.session_date, s.score, s.items, s.delta,
                   s.baseline, greatest(coalesce(s.dyad_sd, 0), coalesce(c.within_sd, 0)) AS band_sd,
                   s.slope, s.rules, s.risk
            FROM dyad_sessions s LEFT JOIN cal c USING (instrument)
            WHERE s.dyad_id = $dyad AND {where}
            ORDER BY s.instrument, s.session_index""",
        {**params, "dyad": dyad_id},
    )


def instrument_sessions(sessions: pl.DataFrame, code: str) -> pl.DataFrame:
    """One instrument's sessions with one column per item (named after the item) for hover, and band edges."""
    one = sessions.filter(pl.col("instrument") == code).sort("session_index")
    items = instrument(code).items
    return one.with_columns(
        *(pl.col("items").list.get(i, null_on_oob=True).alias(name) for i, name in enumerate(items)),
        (pl.col("baseline") - pl.col("band_sd")).alias("band_low"),
        (pl.col("baseline") + pl.col("band_sd")).alias("band_high"),
        pl.col("rules").list.join(", ").alias("rules_text"),
    ).drop("items")


def cutoff_for(code: str, rules: RuleConfig | None = None) -> float | None:
    """The cutoff line the rules used for this instrument (the clinic's override, else the registry's)."""
    return Thresholds.of(rules or RuleConfig(), instrument(code), None, None).cutoff


def dyad_flags(reader: Reader, dyad_id: str, clinic_id: str | None = None) -> pl.DataFrame:
    """Every flag the dyad ever had: open and acknowledged first, then by severity and recency."""
    where, params = _scope(clinic_id)
    return reader.frame(
        f"""SELECT flag_id, instrument, rule, severity, status, outcome, provisional, first_session,
                   last_session, first_session_date, last_session_date, reason, first_flagged_at, resolved_at,
                   resolution
            FROM flags WHERE dyad_id = $dyad AND {where}
            ORDER BY status NOT IN ('open', 'acknowledged'), list_position({list(SEVERITIES)}, severity) DESC,
                     first_session_date DESC, rule""",
        {**params, "dyad": dyad_id},
    )


def dyad_reviews(reader: Reader, dyad_id: str, clinic_id: str | None = None) -> pl.DataFrame:
    """The review history of the dyad's flags (notes are blank in the network snapshot), newest first."""
    where, params = _scope(clinic_id, "f.clinic_id")
    return reader.frame(
        f"""SELECT r.reviewed_at, r.reviewed_by, f.rule, f.instrument, r.from_status, r.to_status, r.note, r.flag_id
            FROM reviews r {CURRENT_FLAG} JOIN flags f ON f.flag_id = {CURRENT_FLAG_ID}
            WHERE f.dyad_id = $dyad AND {where}
            ORDER BY r.reviewed_at DESC""",
        {**params, "dyad": dyad_id},
    )


def flag_marks(flags: pl.DataFrame, code: str) -> pl.DataFrame:
    """Where flag episodes of one instrument began: session number and the rules opened there, most severe first."""
    severity = pl.col("severity").replace_strict(list(SEVERITIES), list(range(len(SEVERITIES))), default=-1)
    return (
        flags.filter((pl.col("instrument") == code) & pl.col("first_session").is_not_null())
        .sort(severity, "rule", descending=[True, False])  # the label names the most severe rule first
        .group_by("first_session", maintain_order=True)
        .agg(pl.col("rule").unique(maintain_order=True).str.join(", ").alias("opened"))
        .rename({"first_session": "session_number"})
        .sort("session_number")
    )


def rupture_marks(flags: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """Rupture sessions and, for repaired ruptures, the next session (the one that repaired it), with scores."""
    ruptures = flags.filter(pl.col("rule") == "rupture")
    rows: list[dict[str, Any]] = []
    for flag in ruptures.iter_rows(named=True):
        same = sessions.filter(pl.col("instrument") == flag["instrument"])
        opened = same.filter(pl.col("session_number") == flag["first_session"])
        if opened.height:
            rows.append({"instrument": flag["instrument"], "session_number": flag["first_session"],
                         "score": opened["score"][0], "event": "rupture"})  # fmt: skip
        later = same.filter(pl.col("session_number") > (flag["last_session"] or 0)).sort("session_index")
        if flag["outcome"] == "repaired" and later.height:
            rows.append({"instrument": flag["instrument"], "session_number": later["session_number"][0],
                         "score": later["score"][0], "event": "repair"})  # fmt: skip
    schema = {"instrument": pl.String, "session_number": pl.Int32, "score": pl.Float64, "event": pl.String}
    return pl.DataFrame(rows, schema=schema)


def scored_sessions(reader: Reader, clinic_id: str | None = None) -> pl.DataFrame:
    """The dyad_sessions columns the weekly trend series need."""
    where, params = _scope(clinic_id)
    return reader.frame(
        f"""SELECT clinic_id, therapist_id, dyad_id, instrument, session_date, score, risk
            FROM dyad_sessions WHERE {where}""",
        params,
    )


def trend_frames(sessions: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """EWMA control-chart rows (limits per series) of weekly mean alliance and weekly flagged share."""
    if sessions.is_empty():
        return pl.DataFrame(schema=CHART_SCHEMA)
    return pl.concat(
        [
            chart_frame(weekly_alliance(sessions), "mean_score"),
            chart_frame(weekly_flagged_share(sessions, threshold), "flagged_share"),
        ]
    )


def caseloads(reader: Reader, clinic_id: str | None = None) -> pl.DataFrame:
    """Per therapist: active dyads (a session in the clinic's last 8 weeks) and how many of them are in the queue."""
    where, params = _scope(clinic_id, "d.clinic_id")
    return reader.frame(
        f"""WITH latest AS (SELECT clinic_id, max(session_date) AS clinic_latest FROM ratings GROUP BY clinic_id)
            SELECT d.clinic_id, d.therapist_id, count(*)::BIGINT AS active_dyads,
                   count(*) FILTER (WHERE d.in_queue)::BIGINT AS flagged_dyads
            FROM dyads d JOIN latest l USING (clinic_id)
            WHERE d.last_session_date > l.clinic_latest - INTERVAL {ACTIVE_DAYS} DAY AND {where}
            GROUP BY ALL ORDER BY d.clinic_id, d.therapist_id""",
        params,
    ).with_columns((pl.col("flagged_dyads") / pl.col("active_dyads")).alias("flagged_share"))


def funnel_limits(p: float, n_max: int, z: Sequence[float] = (2.0, 3.0), points: int = 120) -> pl.DataFrame:
    """Binomial control limits p ± z·√(p(1−p)/n) over caseloads 1..n_max, clipped to [0, 1]."""
    n_max = max(n_max, 2)
    grid = sorted({max(1, round(1 + (n_max - 1) * i / (points - 1))) for i in range(points)})
    rows = []
    for level in z:
        for n in grid:
            half = level * math.sqrt(p * (1 - p) / n)
            rows.append({"n": n, "z": level, "lower": max(0.0, p - half), "upper": min(1.0, p + half)})
    return pl.DataFrame(rows, schema={"n": pl.Int64, "z": pl.Float64, "lower": pl.Float64, "upper": pl.Float64})


def funnel_points(loads: pl.DataFrame) -> tuple[pl.DataFrame, float]:
    """Caseloads with the overall share p and where each falls (inside, above 2σ or 3σ, below); p is pooled."""
    total = int(loads["active_dyads"].sum()) if loads.height else 0
    p = int(loads["flagged_dyads"].sum()) / total if total else 0.0
    sigma = (p * (1 - p) / pl.col("active_dyads")).sqrt()
    z = pl.when(sigma > 0).then((pl.col("flagged_share") - p) / sigma).otherwise(0.0)
    band = (
        pl.when(z > 3).then(pl.lit("above 3σ"))
        .when(z > 2).then(pl.lit("above 2σ"))
        .when(z < -2).then(pl.lit("below 2σ"))
        .otherwise(pl.lit("within limits"))
    )  # fmt: skip
    return loads.with_columns(z.alias("z"), band.alias("position")), p


def exports_by_day(reader: Reader, clinic_id: str | None = None) -> pl.DataFrame:
    """Exports received per clinic, day and status, with their rows and quarantined rows."""
    where, params = _scope(clinic_id)
    return reader.frame(
        f"""SELECT clinic_id, received_at::DATE AS day, status, count(*)::BIGINT AS exports,
                   sum(rows_total)::BIGINT AS rows_total, sum(rows_quarantined)::BIGINT AS rows_quarantined
            FROM exports WHERE {where} GROUP BY ALL ORDER BY day, clinic_id, status""",
        params,
    )


def quarantine_counts(reader: Reader, clinic_id: str | None = None) -> pl.DataFrame:
    """Quarantined ratings per clinic and rule id (from quarantine.rules), split into check and field."""
    where, params = _scope(clinic_id, "q.clinic_id")
    return reader.frame(
        f"""SELECT q.clinic_id, r.rule, split_part(r.rule, ':', 1) AS check_name,
                   nullif(split_part(r.rule, ':', 2), '') AS field, count(*)::BIGINT AS ratings
            FROM quarantine q, unnest(q.rules) AS r(rule)
            WHERE {where} GROUP BY ALL ORDER BY ratings DESC, q.clinic_id, r.rule""",
        params,
    )


def rejected_exports(reader: Reader, clinic_id: str | None = None) -> pl.DataFrame:
    """Exports rejected or quarantined whole, with the reason."""
    where, params = _scope(clinic_id)
    return reader.frame(
        f"""SELECT clinic_id, file_name, received_at, status, rows_total, error FROM exports
            WHERE status <> 'loaded' AND {where} ORDER BY received_at DESC""",
        params,
    )


def export_silence(
    reader: Reader, expected: Sequence[str], days: int, clinic_id: str | None = None, now: datetime | None = None
) -> pl.DataFrame:
    """Per clinic (configured or seen): last export, days since, and whether none arrived for ``days`` days."""
    where, params = _scope(clinic_id)
    seen = reader.frame(
        f"SELECT clinic_id, max(received_at) AS last_export FROM exports WHERE {where} GROUP BY clinic_id", params
    )
    known = pl.DataFrame({"clinic_id": sorted(set(expected))}, schema={"clinic_id": pl.String})
    if clinic_id is not None:
        known = known.filter(pl.col("clinic_id") == clinic_id)
    now = now or datetime.now(UTC)
    joined = known.join(seen, on="clinic_id", how="full", coalesce=True).sort("clinic_id")
    last = pl.col("last_export").dt.convert_time_zone("UTC")  # DuckDB says Etc/UTC, Python says UTC
    since = (pl.lit(now.astimezone(UTC)) - last).dt.total_seconds() / 86400
    return joined.with_columns(since.round(1).alias("days_since")).with_columns(
        (pl.col("days_since").is_null() | (pl.col("days_since") >= days)).alias("stopped")
    )
