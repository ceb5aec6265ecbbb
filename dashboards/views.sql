-- Supervisor views, created (or replaced) by storage whenever the warehouse is opened for writing.
-- Supervisors query them directly; the README documents each with example queries.

-- Open and acknowledged flags of dyads whose risk reaches the queue threshold, most urgent first.
CREATE OR REPLACE VIEW review_queue AS
SELECT
    f.flag_id,
    f.clinic_id,
    f.therapist_id,
    f.dyad_id,
    f.instrument,
    f.rule,
    f.severity,
    f.status,
    d.risk_score,
    f.reason,
    f.provisional,
    f.last_session,
    f.last_session_date,
    f.first_flagged_at,
    date_diff('day', f.first_flagged_at, now()) AS age_days,
    f.worsened_at
FROM flags f
JOIN dyads d USING (dyad_id)
WHERE f.status IN ('open', 'acknowledged')
  AND f.ongoing
  AND d.in_queue
ORDER BY
    d.risk_score DESC,
    list_position(['advisory', 'low', 'medium', 'high', 'critical'], f.severity) DESC,
    f.last_session_date DESC,
    f.flag_id;

-- Open and acknowledged cases: one row per dyad at risk, its headline and the rules behind it, most urgent first.
CREATE OR REPLACE VIEW case_queue AS
SELECT
    c.case_id,
    c.clinic_id,
    c.therapist_id,
    c.dyad_id,
    c.status,
    c.severity,
    c.risk_score,
    c.headline_rule,
    c.headline_reason,
    c.rules,
    len(c.flag_ids) AS flags,
    c.change,
    c.change_session_date,
    c.opened_session_date,
    c.last_session_date,
    date_diff('day', c.opened_at, now()) AS age_days
FROM cases c
WHERE c.status IN ('open', 'acknowledged')
ORDER BY
    c.risk_score DESC,
    list_position(['advisory', 'low', 'medium', 'high', 'critical'], c.severity) DESC,
    c.last_session_date DESC,
    c.case_id;

-- Every scored session of every dyad, with its features and the rules with evidence there.
CREATE OR REPLACE VIEW dyad_trajectory AS
SELECT
    s.clinic_id,
    s.therapist_id,
    s.dyad_id,
    s.instrument,
    s.session_index,
    s.session_number,
    s.session_date,
    s.score,
    s.items,
    s.delta,
    s.baseline,
    s.slope,
    s.ewma,
    s.z_own,
    s.rules,
    s.risk
FROM dyad_sessions s
ORDER BY s.dyad_id, s.instrument, s.session_index;

-- Per therapist and alliance instrument: caseload, alliance level over the last 8 weeks, flags.
CREATE OR REPLACE VIEW therapist_summary AS
WITH latest AS (SELECT clinic_id, max(session_date) AS clinic_latest FROM ratings GROUP BY clinic_id),
recent AS (
    SELECT s.clinic_id, s.therapist_id, s.instrument, avg(s.score) AS mean_score_8w, count(*) AS sessions_8w
    FROM dyad_sessions s JOIN latest l USING (clinic_id)
    WHERE s.session_date > l.clinic_latest - INTERVAL 56 DAY
      AND s.instrument IN ('SRS', 'CSRS', 'WAI_SR', 'ARM5')
    GROUP BY ALL
),
caseload AS (
    SELECT clinic_id, therapist_id,
           count(*) AS dyads,
           count(*) FILTER (WHERE d.last_session_date > l.clinic_latest - INTERVAL 56 DAY) AS active_dyads,
           count(*) FILTER (WHERE d.in_queue) AS dyads_in_queue
    FROM dyads d JOIN latest l USING (clinic_id)
    GROUP BY ALL
),
open_flags AS (
    SELECT clinic_id, therapist_id, count(*) AS open_flags
    FROM flags WHERE status IN ('open', 'acknowledged') AND ongoing GROUP BY ALL
)
SELECT c.clinic_id, c.therapist_id, r.instrument, c.dyads, c.active_dyads, c.dyads_in_queue,
       round(c.dyads_in_queue / nullif(c.active_dyads, 0), 3) AS queue_share,
       round(r.mean_score_8w, 2) AS mean_score_8w, r.sessions_8w,
       coalesce(o.open_flags, 0) AS open_flags
FROM caseload c
LEFT JOIN recent r USING (clinic_id, therapist_id)
LEFT JOIN open_flags o USING (clinic_id, therapist_id)
ORDER BY c.clinic_id, c.therapist_id, r.instrument;

-- Per clinic: data received, caseload, alliance level, and the share of active dyads in the queue.
CREATE OR REPLACE VIEW clinic_summary AS
WITH latest AS (SELECT clinic_id, max(session_date) AS clinic_latest FROM ratings GROUP BY clinic_id),
ex AS (
    SELECT clinic_id, count(*) AS exports, sum(rows_quarantined) AS rows_quarantined,
           count(*) FILTER (WHERE status = 'rejected') AS exports_rejected, max(received_at) AS last_export
    FROM exports GROUP BY clinic_id
),
dy AS (
    SELECT d.clinic_id, count(*) AS dyads,
           count(*) FILTER (WHERE d.last_session_date > l.clinic_latest - INTERVAL 56 DAY) AS active_dyads,
           count(*) FILTER (WHERE d.in_queue) AS dyads_in_queue
    FROM dyads d JOIN latest l USING (clinic_id) GROUP BY d.clinic_id
),
al AS (
    SELECT s.clinic_id, round(avg(s.score), 2) AS mean_alliance_8w
    FROM dyad_sessions s JOIN latest l USING (clinic_id)
    WHERE s.session_date > l.clinic_latest - INTERVAL 56 DAY AND s.instrument IN ('SRS', 'CSRS')
    GROUP BY s.clinic_id
),
fl AS (
    SELECT clinic_id, count(*) FILTER (WHERE status IN ('open', 'acknowledged') AND ongoing) AS open_flags
    FROM flags GROUP BY clinic_id
)
SELECT ex.clinic_id, ex.exports, ex.exports_rejected, ex.rows_quarantined, ex.last_export, l.clinic_latest AS latest_session,
       coalesce(dy.dyads, 0) AS dyads, coalesce(dy.active_dyads, 0) AS active_dyads,
       coalesce(dy.dyads_in_queue, 0) AS dyads_in_queue,
       round(dy.dyads_in_queue / nullif(dy.active_dyads, 0), 3) AS queue_share,
       al.mean_alliance_8w, coalesce(fl.open_flags, 0) AS open_flags
FROM ex
LEFT JOIN latest l USING (clinic_id)
LEFT JOIN dy USING (clinic_id)
LEFT JOIN al USING (clinic_id)
LEFT JOIN fl USING (clinic_id)
ORDER BY ex.clinic_id;
