"""The warehouse tables: their DDL, natural keys, migrations and the supervisor views."""

from __future__ import annotations

import contextlib
import functools
import hashlib
from pathlib import Path

import duckdb

from alliance.errors import StorageError

SCHEMA_VERSION = 1
RATING_KEY = ("clinic_id", "client_id", "therapist_id", "instrument", "session_date", "session_number")
DYAD_KEY = ("clinic_id", "client_id", "therapist_id")
REVIEW_STATUSES = ("open", "acknowledged", "resolved")
# meta key: when a change no column dates (a full scoring's marks and risks, a key rotation's ids) last wrote;
# a snapshot published before it is compared on every row
UNDATED_CHANGE = "undated_change_at"

# Stable, documented tables (README "Tables"); no PRIMARY KEY/UNIQUE: DuckDB's ART indexes have open
# corruption reports, and uniqueness is kept by the single writer instead.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS exports (
    export_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    file_name VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    bytes BIGINT,
    received_at TIMESTAMPTZ NOT NULL,
    status VARCHAR NOT NULL,
    instruments VARCHAR[],
    rows_total INTEGER NOT NULL,
    rows_new INTEGER NOT NULL,
    rows_updated INTEGER NOT NULL,
    rows_unchanged INTEGER NOT NULL,
    rows_quarantined INTEGER NOT NULL,
    error VARCHAR,
    archived_as VARCHAR
);
CREATE TABLE IF NOT EXISTS ratings (
    dyad_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    session_date DATE NOT NULL,
    session_number INTEGER NOT NULL,
    items DOUBLE[],
    total DOUBLE NOT NULL,
    export_id VARCHAR NOT NULL,
    source_line INTEGER,
    loaded_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS rating_history (
    dyad_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    session_date DATE NOT NULL,
    session_number INTEGER NOT NULL,
    items DOUBLE[],
    total DOUBLE NOT NULL,
    export_id VARCHAR NOT NULL,
    source_line INTEGER,
    loaded_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    replaced_by_export VARCHAR NOT NULL,
    replaced_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    export_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    source_line INTEGER,
    instrument VARCHAR,
    rules VARCHAR[] NOT NULL,
    reasons VARCHAR[] NOT NULL,
    "values" JSON,
    quarantined_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS client_refs (
    clinic_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    client_ref VARCHAR NOT NULL,
    first_export_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS dyad_sessions (
    dyad_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    session_index INTEGER NOT NULL,
    session_date DATE NOT NULL,
    session_number INTEGER NOT NULL,
    score DOUBLE NOT NULL,
    items DOUBLE[],
    delta DOUBLE,
    baseline DOUBLE,
    slope DOUBLE,
    ewma DOUBLE,
    dyad_mean DOUBLE,
    dyad_sd DOUBLE,
    z_own DOUBLE,
    min_item DOUBLE,
    rules VARCHAR[],
    risk DOUBLE
);
CREATE TABLE IF NOT EXISTS flags (
    flag_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    dyad_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    rule VARCHAR NOT NULL,
    severity VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    ongoing BOOLEAN NOT NULL,
    outcome VARCHAR NOT NULL,
    provisional BOOLEAN NOT NULL,
    risk_score DOUBLE NOT NULL,
    magnitude DOUBLE,
    reason VARCHAR NOT NULL,
    evidence JSON,
    first_session INTEGER,
    first_session_date DATE,
    last_session INTEGER,
    last_session_date DATE,
    rc_used DOUBLE,
    calibration_id VARCHAR,
    first_flagged_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    worsened_at TIMESTAMPTZ,
    resolved_at TIMESTAMPTZ,
    resolution VARCHAR
);
CREATE TABLE IF NOT EXISTS reviews (
    flag_id VARCHAR NOT NULL,
    reviewed_by VARCHAR NOT NULL,
    reviewed_at TIMESTAMPTZ NOT NULL,
    from_status VARCHAR NOT NULL,
    to_status VARCHAR NOT NULL,
    note VARCHAR
);
CREATE TABLE IF NOT EXISTS flag_renames (
    old_flag_id VARCHAR NOT NULL,
    new_flag_id VARCHAR NOT NULL,
    renamed_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS dyads (
    dyad_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    instruments VARCHAR[],
    sessions INTEGER NOT NULL,
    first_session_date DATE,
    last_session_date DATE,
    risk_score DOUBLE NOT NULL,
    ongoing_rules VARCHAR[],
    in_queue BOOLEAN NOT NULL
);
ALTER TABLE dyads ADD COLUMN IF NOT EXISTS course_open BOOLEAN DEFAULT true;
ALTER TABLE dyads ADD COLUMN IF NOT EXISTS last_session INTEGER;
ALTER TABLE dyads ADD COLUMN IF NOT EXISTS last_instrument VARCHAR;
ALTER TABLE dyads ADD COLUMN IF NOT EXISTS cadence_days DOUBLE;
CREATE TABLE IF NOT EXISTS cases (
    case_id VARCHAR NOT NULL,
    dyad_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    severity VARCHAR NOT NULL,
    risk_score DOUBLE NOT NULL,
    headline_rule VARCHAR,
    headline_reason VARCHAR,
    rules VARCHAR[],
    flag_ids VARCHAR[],
    opened_session_date DATE,
    last_session_date DATE,
    change VARCHAR NOT NULL,
    change_session_date DATE,
    previous_case_id VARCHAR,
    close_reason VARCHAR,
    opened_at TIMESTAMPTZ NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    closed_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS case_reviews (
    case_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    reviewed_by VARCHAR NOT NULL,
    reviewed_at TIMESTAMPTZ NOT NULL,
    from_status VARCHAR NOT NULL,
    to_status VARCHAR NOT NULL,
    flag_ids VARCHAR[],
    note VARCHAR
);
CREATE TABLE IF NOT EXISTS calibrations (
    calibration_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    sd DOUBLE NOT NULL,
    r DOUBLE NOT NULL,
    rc DOUBLE NOT NULL,
    n_scores BIGINT NOT NULL,
    n_pairs BIGINT NOT NULL,
    within_sd DOUBLE NOT NULL,
    estimated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS expected_trajectories (
    curve_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    intake_band INTEGER NOT NULL,
    intake_lo DOUBLE NOT NULL,
    intake_hi DOUBLE NOT NULL,
    session_index INTEGER NOT NULL,
    expected DOUBLE NOT NULL,
    lower DOUBLE NOT NULL,
    upper DOUBLE NOT NULL,
    n INTEGER NOT NULL,
    estimated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_key VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    recipient VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL,
    error VARCHAR,
    channel VARCHAR,
    case_id VARCHAR
);
CREATE TABLE IF NOT EXISTS audit (
    happened_at TIMESTAMPTZ NOT NULL,
    actor VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    subject VARCHAR NOT NULL,
    detail VARCHAR
);
CREATE TABLE IF NOT EXISTS snapshots (
    path VARCHAR NOT NULL,
    clinic_id VARCHAR,
    sha256 VARCHAR NOT NULL,
    published_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_dyads (
    dyad_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    export_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS scoring_runs (
    run_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    export_id VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    dyads_scored INTEGER NOT NULL,
    recalibrated BOOLEAN NOT NULL,
    flags_new INTEGER NOT NULL,
    flags_worsened INTEGER NOT NULL,
    flags_reopened INTEGER NOT NULL,
    flags_auto_resolved INTEGER NOT NULL,
    queue_dyads INTEGER NOT NULL,
    active_dyads INTEGER NOT NULL
);
"""
VIEWS_FILE = Path(__file__).parents[2] / "dashboards" / "views.sql"

# After a table aliased r with a flag_id column: joins flags f on the id that flag has now (after key rotations).
CURRENT_FLAG = """LEFT JOIN (
        SELECT old_flag_id, arg_max(new_flag_id, renamed_at) AS renamed FROM flag_renames GROUP BY 1
    ) n ON n.old_flag_id = r.flag_id"""
CURRENT_FLAG_ID = "coalesce(n.renamed, r.flag_id)"


# Columns added after a table first shipped; a warehouse made by an earlier version gains them here.
MIGRATIONS = """
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS channel VARCHAR;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS case_id VARCHAR;
"""


# Each dyad's course from its ratings (of those ``{where}`` selects): what the dyads summary holds besides its
# standing. The latest session is by date, then number, then an alliance instrument before ORS, then by name;
# the usual interval is the median of the days between its session days (NULL with one).
COURSES = """
SELECT dyad_id, clinic_id, therapist_id, client_id, instruments, sessions, first_session_date, last_session_date,
       last.session_number AS last_session, last.instrument AS last_instrument,
       CASE WHEN len(days) > 1 THEN list_aggregate(
           list_transform(range(1, len(days)), lambda i: days[i + 1] - days[i]), 'median'
       )::DOUBLE END AS cadence_days
FROM (
    SELECT dyad_id, any_value(clinic_id) AS clinic_id, any_value(therapist_id) AS therapist_id,
           any_value(client_id) AS client_id, list_sort(list_distinct(list(instrument))) AS instruments,
           count(DISTINCT (session_date, session_number))::INTEGER AS sessions,
           min(session_date) AS first_session_date, max(session_date) AS last_session_date,
           arg_min(struct_pack(instrument, session_number),
                   struct_pack(d := DATE '1970-01-01' - session_date, n := -session_number,
                               o := instrument IN ('ORS'), i := instrument)) AS last,
           list_sort(list_distinct(list(session_date))) AS days
    FROM ratings WHERE {where} GROUP BY dyad_id
)
"""
# a warehouse whose dyads summary predates the course columns gets them from its ratings, once
FILL_COURSES = f"""
UPDATE dyads SET last_session = c.last_session, last_instrument = c.last_instrument, cadence_days = c.cadence_days
FROM ({COURSES.format(where="TRUE")}) c WHERE dyads.dyad_id = c.dyad_id
"""


@functools.cache
def schema_digest() -> str:
    """What the tables, migrations and views of this version are: a warehouse that records it needs no DDL."""
    ddl = SCHEMA + MIGRATIONS + VIEWS_FILE.read_text(encoding="utf-8")
    return hashlib.sha256(f"{SCHEMA_VERSION}|{ddl}".encode()).hexdigest()[:16]


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.CatalogException):  # a new file has no meta table yet
        if con.execute("SELECT value FROM meta WHERE key = 'schema_digest'").fetchall() == [(schema_digest(),)]:
            return  # the DDL costs ~20 ms a connection, paid per file of a night
    con.execute(SCHEMA)
    con.execute(MIGRATIONS)
    # by the rows, not the columns' presence: a fill cut short (memory, disk) is done again on the next open
    if con.execute("SELECT count(*) FROM dyads WHERE last_instrument IS NULL").fetchall()[0][0]:
        con.execute(FILL_COURSES)
    con.execute(VIEWS_FILE.read_text(encoding="utf-8"))
    found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    if not found:
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    elif int(found[0][0]) > SCHEMA_VERSION:
        raise StorageError(f"warehouse schema {found[0][0]} is newer than this version of Alliance Watch")
    con.execute("DELETE FROM meta WHERE key = 'schema_digest'")
    con.execute("INSERT INTO meta VALUES ('schema_digest', ?)", [schema_digest()])
