"""Scoring as plain functions: features, rules and flags for the dyads an export touched, or for all."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import polars as pl

from alliance import __version__
from alliance.clinics import Clinic, RuleConfig, clinic_batches
from alliance.faults import crash_point
from alliance.settings import Settings
from alliance.storage import UNDATED_CHANGE, Writer
from flows.scorers import score_shares, scoring_pool
from transforms.calibration import Calibration, estimate
from transforms.cases import CaseUpdate, update_cases
from transforms.expected import ExpectedCurve, curves_frame, curves_of, estimate_expected
from transforms.flags import declines_at_last_session, stopped_appearing
from transforms.queue import QueuePolicy, compare_policies, policy_options, queue_frame, settled_for_good
from transforms.reconcile import CHANGE_SCHEMA, Reconciled, reconcile
from transforms.trajectory import course_scores, session_features

ESTIMATED_ON = "estimated_on"  # meta key: ratings per instrument when reliable change was last estimated
PENDING_CLINICS = "pending_clinics"  # meta key of earlier versions: clinics a batch cut short left unsettled
SCORED_WITH = "scored_with"  # meta key: the fingerprint of what every dyad's flags were last computed from
SESSION_TABLE_COLUMNS = (
    "dyad_id", "clinic_id", "therapist_id", "client_id", "instrument", "session_index", "session_date",
    "session_number", "score", "items", "delta", "baseline", "slope", "ewma", "dyad_mean", "dyad_sd", "z_own",
    "min_item", "rules", "risk",
)  # fmt: skip


@dataclass(frozen=True)
class ScoringResult:
    """What one scoring run did, for people, flows and alerts."""

    run_id: str
    dyads_scored: int
    recalibrated: bool
    new: int
    worsened: int
    reopened: int
    auto_resolved: int
    queue_dyads: int
    active_dyads: int  # dyads whose course is open (see transforms.queue.course_ended)
    changed_flags: pl.DataFrame  # flag_id, change
    queue_options: pl.DataFrame | None = None  # what other queue settings would give (rescore only)
    cases_opened: int = 0  # new cases, and cases of dyads back in the queue
    cases_worse: int = 0
    cases_closed: int = 0
    clinics: tuple[str, ...] = ()  # whose silence, queue and cases it decided (empty: every clinic's, or none)


def _features(ratings: pl.DataFrame, configs: dict[str, RuleConfig]) -> pl.DataFrame:
    """Session features, with each clinic's own trend window."""
    windows = {cid: cfg.trend_window for cid, cfg in configs.items()}
    tagged = ratings.with_columns(
        pl.col("clinic_id")
        .replace_strict(windows, default=RuleConfig().trend_window, return_dtype=pl.Int64)
        .alias("trend_window")
    )
    parts = [
        session_features(part.drop("trend_window"), window=int(window))
        for (window,), part in tagged.partition_by("trend_window", as_dict=True).items()
    ]
    return pl.concat(parts) if parts else session_features(ratings)


def _estimated_on(writer: Writer) -> dict[str, int]:
    """Ratings per instrument when reliable change was last estimated (or tried: too few pairs give none)."""
    estimated_on = {row["instrument"]: row["n_scores"] for row in writer.current_calibrations().iter_rows(named=True)}
    for code, n in json.loads(writer.meta_value(ESTIMATED_ON) or "{}").items():
        estimated_on[code] = max(n, estimated_on.get(code, 0))
    return estimated_on


def _stale(writer: Writer, counts: dict[str, int], growth: float) -> bool:
    """True when an instrument's ratings grew past ``growth`` since reliable change was last estimated, or it
    was never estimated. An instrument with too few pairs for an estimate waits for growth like any other."""
    estimated_on = _estimated_on(writer)
    return any(code not in estimated_on or n > estimated_on[code] * (1 + growth) for code, n in counts.items())


def _queue_counts(writer: Writer) -> tuple[int, int]:
    """(dyads in the queue, dyads whose course is open)."""
    queue = writer.frame(
        "SELECT count(*) FILTER (WHERE in_queue) AS q, count(*) FILTER (WHERE sessions > 0 AND course_open) AS a "
        "FROM dyads"
    ).row(0)
    return queue[0] or 0, queue[1] or 0


def _calibrations(
    writer: Writer, growth: float, force: bool
) -> tuple[dict[str, Calibration], dict[str, ExpectedCurve], bool]:
    """Current reliable-change estimates and expected trajectories; re-estimated when missing, forced, or the
    data grew enough (a batch scores at its end: it re-estimates once)."""
    stored = {
        row["instrument"]: Calibration(
            row["instrument"], row["sd"], row["r"], row["rc"], row["n_scores"], row["n_pairs"], row["within_sd"]
        )
        for row in writer.current_calibrations().iter_rows(named=True)
    }
    curves = curves_of(writer.current_expected())
    counts = writer.rating_counts()
    if not force and not _stale(writer, counts, growth):
        return stored, curves, False
    writer.set_meta(ESTIMATED_ON, json.dumps(counts, sort_keys=True))
    features = course_scores(writer.course_ratings())
    fresh = {c.instrument: c for c in estimate(features)}
    changed = [c for code, c in fresh.items() if stored.get(code) != c]
    now = datetime.now(UTC)
    if changed:
        writer.save_calibrations(
            pl.DataFrame(
                [
                    {
                        "calibration_id": c.calibration_id,
                        "instrument": c.instrument,
                        "sd": c.sd,
                        "r": c.r,
                        "rc": c.rc,
                        "n_scores": c.n_scores,
                        "n_pairs": c.n_pairs,
                        "within_sd": c.within_sd,
                        "estimated_at": now,
                    }
                    for c in changed
                ]
            )
        )
    new_curves = {c.instrument: c for c in estimate_expected(features)}
    renewed = [c for code, c in new_curves.items() if curves.get(code) is None or curves[code].curve_id != c.curve_id]
    if renewed:
        writer.save_expected(curves_frame(renewed).with_columns(estimated_at=pl.lit(now)))
    return {**stored, **fresh}, {**curves, **new_curves}, bool(changed or renewed)


def score_dyads(
    writer: Writer,
    clinics: dict[str, Clinic],
    settings: Settings,
    dyad_ids: list[str] | None,
    kind: str = "ingest",
    export_id: str | None = None,
    recalibrate: bool = False,
    settle: list[str] | None = None,
    commit_chunks: bool = False,
) -> ScoringResult:
    """Re-score these dyads (all when None) inside the caller's transaction; incremental equals full.

    The dyads a batch's files loaded and left in ``pending_dyads`` are scored with them, and ``settle`` names
    clinics whose silence, queue and cases are decided again besides those of the dyads scored: a batch's end
    is ``score_dyads(..., [], kind="batch", settle=its clinics)``.

    With ``commit_chunks`` (a transaction holding this scoring alone: a batch's end, ``rescore``), a full scoring
    commits each chunk of dyads as it goes, so that the transaction never holds every flag and scored session of
    the network (2.9 → 7.3 GB over the full-scale backfill's 24 chunks). Until its end the warehouse says a full
    scoring is due, so one cut short is done again whole by the next run.
    """
    started = datetime.now(UTC)
    configs = {cid: clinic.rules for cid, clinic in clinics.items()}
    calibrations, curves, recalibrated = _calibrations(writer, settings.recalibrate_growth, recalibrate)
    pending = writer.pending_dyads()
    if recalibrated:
        dyad_ids = None  # a new RC changes every dyad's findings: keep all flags on one calibration
    elif dyad_ids is not None:
        dyad_ids = sorted({*dyad_ids, *pending["dyad_id"]})
    scored_dyads, touched_clinics, first_changes = 0, set(pending["clinic_id"]), []
    # every dyad in chunks: memory stays that of one chunk, whatever the network's size
    chunks = _dyad_chunks(writer) if dyad_ids is None else _chunks(dyad_ids)
    commit_chunks = commit_chunks and dyad_ids is None
    if dyad_ids is None:  # rows no column dates change (marks, risks): snapshots are compared whole once after it
        writer.set_meta(UNDATED_CHANGE, started.isoformat())
    if commit_chunks:
        writer.set_meta(SCORED_WITH, "")  # a full scoring under way: due again until it ends
    with scoring_pool() as pool:
        if dyad_ids is None:  # a full scoring: the workers start while its first chunk is read
            pool.start(sum(map(len, chunks)))
        for chunk in chunks:
            ratings = writer.ratings_of(chunk)
            scored = score_shares(pool, _features(ratings, configs), configs, calibrations, curves)
            flags = writer.flags_of(dyad_ids=chunk, except_rule="stopped_appearing")
            first = reconcile(scored.findings, flags, started)
            writer.replace_flags(first.flags)
            writer.replace_dyad_sessions(chunk, scored.sessions.select(SESSION_TABLE_COLUMNS))
            scored_dyads += ratings["dyad_id"].n_unique()
            touched_clinics.update(ratings["clinic_id"].unique().to_list())
            first_changes.append(first.changes)
            if commit_chunks:
                writer.commit_so_far()
                crash_point("after_scoring_chunk")
    unsettled = _pending(writer)  # what an earlier version's batch cut short left
    scope_clinics = None if dyad_ids is None else sorted({*touched_clinics, *(settle or []), *unsettled})
    if scope_clinics == []:
        second, cases = Reconciled(pl.DataFrame(), _no_changes()), CaseUpdate(pl.DataFrame(), _no_changes())
    else:
        # the dyads whose ratings may have changed: those scored, and every dyad of a clinic left unsettled
        rated = None if dyad_ids is None else sorted({*dyad_ids, *writer.dyads_rated_in(unsettled)})
        # dyads settled for good are skipped only while every flag stands as these rules score it
        skip = rated is not None and writer.meta_value(SCORED_WITH) == scoring_fingerprint(clinics, settings)
        second, cases = _settle(writer, configs, settings, scope_clinics, started, rated, skip)
    if pending.height:
        writer.clear_pending()
    if unsettled:
        writer.set_meta(PENDING_CLINICS, "[]")
    case_changes = {name: cases.changes.filter(pl.col("change") == name).height for name in ("new", "back", "worse")}
    changes = pl.concat([*first_changes, second.changes])
    counts = {name: changes.filter(pl.col("change") == name).height for name in ("new", "worsened", "reopened")}
    in_queue, active = _queue_counts(writer)
    result = ScoringResult(
        run_id=uuid.uuid4().hex[:16],
        dyads_scored=scored_dyads,
        recalibrated=recalibrated,
        new=counts["new"],
        worsened=counts["worsened"],
        reopened=counts["reopened"],
        auto_resolved=changes.filter(pl.col("change") == "auto_resolved").height,
        queue_dyads=in_queue,
        active_dyads=active,
        changed_flags=changes,
        cases_opened=case_changes["new"] + case_changes["back"],
        cases_worse=case_changes["worse"],
        cases_closed=cases.changes.filter(pl.col("change") == "closed").height,
        clinics=tuple(scope_clinics or ()),
    )
    if dyad_ids is None:  # every dyad now stands as these rules and this policy score it, every clinic settled
        writer.set_meta(SCORED_WITH, scoring_fingerprint(clinics, settings))
    writer.record_scoring_run(
        {
            "run_id": result.run_id,
            "kind": kind,
            "export_id": export_id,
            "started_at": started,
            "finished_at": datetime.now(UTC),
            "dyads_scored": result.dyads_scored,
            "recalibrated": recalibrated,
            "flags_new": result.new,
            "flags_worsened": result.worsened,
            "flags_reopened": result.reopened,
            "flags_auto_resolved": result.auto_resolved,
            "queue_dyads": result.queue_dyads,
            "active_dyads": result.active_dyads,
        }
    )
    return result


SCORE_CHUNK_DYADS = 20_000  # ≈ 240k ratings: a full scoring's peak memory stays near 1 GB
SETTLE_CLINICS = 250  # clinics settled at once: all 1,000 of night 1.0 at once held 4.5 GB, 250 at a time 2.0 GB
SETTLE_DYADS = 100_000  # or fewer clinics, when their dyads reach this: the backfill's 100 clinics at once held 8 GB


def _dyad_chunks(writer: Writer) -> list[list[str]]:
    """Every dyad a full scoring covers (rated, flagged or with scored sessions), in chunks of SCORE_CHUNK_DYADS."""
    ids = writer.frame(
        """SELECT dyad_id FROM ratings UNION SELECT dyad_id FROM flags UNION SELECT dyad_id FROM dyad_sessions
        ORDER BY 1"""
    )["dyad_id"].to_list()
    return _chunks(ids) or [[]]


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + SCORE_CHUNK_DYADS] for i in range(0, len(ids), SCORE_CHUNK_DYADS)]


def _no_changes() -> pl.DataFrame:
    return pl.DataFrame(schema=CHANGE_SCHEMA)


def _pending(writer: Writer) -> list[str]:
    return list(json.loads(writer.meta_value(PENDING_CLINICS) or "[]"))


def _settle(
    writer: Writer,
    configs: dict[str, RuleConfig],
    settings: Settings,
    scope_clinics: list[str] | None,
    started: datetime,
    rated: list[str] | None = None,
    skip: bool = False,
) -> tuple[Reconciled, CaseUpdate]:
    """``_clinic_standing`` of these clinics (all when None), ``SETTLE_CLINICS`` at a time: a clinic's silence,
    queue and cases read only its own rows, so the chunks decide what one pass over the network decides, in the
    memory of a chunk. ``rated``: the dyads whose ratings may have changed (all when None); ``skip``: leave out
    the dyads settled for good."""
    clinics = writer.clinics_held() if scope_clinics is None else scope_clinics
    # a file's own clinic needs no count of every clinic's dyads (a scan of the network's ratings)
    groups = settle_groups(clinics, writer.dyads_per_clinic() if len(clinics) > 1 else {})
    if scope_clinics is None and len(groups) <= 1:  # the whole network (or none) in one pass
        return _clinic_standing(writer, configs, settings, None, started, rated, skip)
    parts = [_clinic_standing(writer, configs, settings, group, started, rated, skip) for group in groups]
    return (
        Reconciled(pl.concat([r.flags for r, _ in parts]), pl.concat([r.changes for r, _ in parts])),
        CaseUpdate(
            pl.concat([c.cases for _, c in parts], how="diagonal_relaxed"), pl.concat([c.changes for _, c in parts])
        ),
    )


def settle_groups(clinics: list[str], dyads: dict[str, int]) -> list[list[str]]:
    """``clinics`` in order, in groups of at most ``SETTLE_CLINICS`` clinics and ``SETTLE_DYADS`` rated dyads (a
    larger clinic alone): what one ``_clinic_standing`` holds at once."""
    return clinic_batches(clinics, dyads, SETTLE_CLINICS, SETTLE_DYADS)


def _clinic_standing(
    writer: Writer,
    configs: dict[str, RuleConfig],
    settings: Settings,
    scope_clinics: list[str] | None,
    started: datetime,
    rated: list[str] | None = None,
    skip: bool = False,
) -> tuple[Reconciled, CaseUpdate]:
    """Silence, the queue and cases for every dyad of these clinics (all when None), from their flags, once
    the courses of the ``rated`` dyads among them (all when None) are brought up to date; with ``skip``, for
    every dyad but those settled for good."""
    writer.refresh_courses(scope_clinics, rated)
    previous_cases = writer.cases_of(scope_clinics)
    # silence is relative to the clinic's latest session, so it is judged for every dyad of the clinic
    last_sessions = writer.last_sessions(scope_clinics)
    live = None
    if skip:
        # but for those whose course ended long enough ago that nothing can change until they are rated again
        # (most of a clinic's dyads after a few years); kept: a dyad with a live case, as its case may close,
        # and one whose ended silence a supervisor reopened, as settling resolves it again
        kept = [*previous_cases.filter(pl.col("status") != "closed")["dyad_id"],
                *writer.dyads_with_open_ended_silences(scope_clinics)]  # fmt: skip
        last_sessions = last_sessions.filter(
            ~settled_for_good(last_sessions, configs, rated) | pl.col("dyad_id").is_in(kept)
        )
        live = last_sessions["dyad_id"].to_list()
    # silence, the queue and cases read the ongoing findings alone: not a clinic's closed ones, which grow with
    # its history (most of its flags after a few years)
    declines = declines_at_last_session(
        writer.flags_of(live, scope_clinics, except_rule="stopped_appearing", ongoing=True)
    )
    silent = stopped_appearing(last_sessions, configs, declines)
    held = writer.flags_of(live, scope_clinics, rule="stopped_appearing")
    second = reconcile(silent, held, started)
    # only the flags this judgement changed (stamped now) are stored again; the rest are the rows held, unless
    # an id was held or found twice (the reconcile keeps one of the rows held, and starts anew a second finding)
    twice = held["flag_id"].is_duplicated().any() or silent["flag_id"].is_duplicated().any()
    writer.replace_flags(second.flags if twice else second.flags.filter(pl.col("updated_at") == started))
    policy = QueuePolicy(settings.queue_min_risk, settings.queue_target_share)
    scope_flags = writer.flags_of(live, scope_clinics, ongoing=True)
    standing = queue_frame(scope_flags, last_sessions, configs, policy)
    writer.set_standing(scope_clinics, standing, policy.min_risk, policy.describe())
    # the same flags: set_standing changes only their risk_score, which cases do not read
    cases = update_cases(previous_cases, writer.dyads_of(scope_clinics), scope_flags, started)
    writer.replace_cases(cases.cases)
    return second, cases


def queue_options(writer: Writer, clinics: dict[str, Clinic], settings: Settings) -> pl.DataFrame:
    """The queue each setting would give on the warehouse as scored now (see ``compare_policies``)."""
    configs = {cid: clinic.rules for cid, clinic in clinics.items()}
    current = QueuePolicy(settings.queue_min_risk, settings.queue_target_share)
    return compare_policies(writer.flags_of(), writer.last_sessions(None), configs, policy_options(current))


def scoring_fingerprint(clinics: dict[str, Clinic], settings: Settings) -> str:
    """What flags depend on besides the ratings and the calibration: each clinic's rules, the queue policy and
    the software's version. Nothing else — not the date: silence is judged against the clinic's latest session."""
    payload = {
        "rules": {cid: clinic.rules.model_dump(mode="json") for cid, clinic in sorted(clinics.items())},
        "queue": [settings.queue_min_risk, settings.queue_target_share],
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def full_scoring_due(writer: Writer, clinics: dict[str, Clinic], settings: Settings) -> bool:
    """True when scoring only the touched dyads would leave others behind: the rules, the queue policy or the
    software changed since the last full scoring, or reliable change is due for re-estimation."""
    if writer.meta_value(SCORED_WITH) != scoring_fingerprint(clinics, settings):
        return True
    return _stale(writer, writer.rating_counts(), settings.recalibrate_growth)


def scoring_totals(runs: list[ScoringResult]) -> ScoringResult:
    """Several scoring runs as one: flag changes added up, the queue as the last run left it."""
    last = runs[-1]
    return replace(
        last,
        dyads_scored=sum(r.dyads_scored for r in runs),
        new=sum(r.new for r in runs),
        worsened=sum(r.worsened for r in runs),
        reopened=sum(r.reopened for r in runs),
        auto_resolved=sum(r.auto_resolved for r in runs),
        recalibrated=any(r.recalibrated for r in runs),
    )
