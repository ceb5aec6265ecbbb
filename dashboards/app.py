"""Alliance Watch supervisor dashboard (Streamlit): queue, dyad, trends, data health, from read-only snapshots."""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import streamlit as st

from alliance.clinics import RuleConfig, load_clinics
from alliance.errors import AllianceError, WarehouseBusy
from alliance.instruments import instrument
from alliance.settings import load_settings
from alliance.storage import Warehouse
from dashboards import charts, data
from dashboards.access import Viewer, load_access, viewer_of
from dashboards.launch import CLINIC_ENV, HOME_ENV, is_loopback
from flows.reviews import review_case, review_flag

PAGES = ("Queue", "Dyad", "Trends", "Data health")
PAGE_SIZE = 25
ROW_PX = 35  # st.dataframe's row height
CHANGE_WORDS = {"new": "new", "worse": "worse since", "back": "back after repair, since"}
CASE_ROW_PX = 84  # st.dataframe wraps text only in rows taller than 4rem (64 px): four lines of headline
EVIDENCE_ROW_PX = 68  # three lines of a flag's reason in the case page's wider reason column
REVIEW_LOCK_WAIT_S = 20.0  # a click should not hang for the pipeline's 10-minute lock wait
LOADERS: dict[str, Any] = {
    "queue": data.load_queue,
    "cases": data.load_cases,
    "case": data.case_detail,
    "case_flags": data.case_flags,
    "case_history": data.case_history,
    "dyads": data.dyad_options,
    "summary": data.dyad_summary,
    "trajectory": data.trajectory,
    "flags": data.dyad_flags,
    "reviews": data.dyad_reviews,
    "caseloads": data.caseloads,
    "exports": data.exports_by_day,
    "quarantine": data.quarantine_counts,
    "rejected": data.rejected_exports,
    "clinics": data.clinic_ids,
    "threshold": data.queue_min_risk,
}


@st.cache_data(show_spinner=False, max_entries=256)
def load(name: str, home: str, source: str | None, stamp: tuple[str, int, int], *args: Any) -> Any:
    """One query on the snapshot, cached until the snapshot file changes (``stamp`` is its path, mtime, inode)."""
    with data.open_reader(Path(home), source) as reader:
        return LOADERS[name](reader, *args)


@st.cache_data(show_spinner=False, max_entries=16)
def load_trends(home: str, source: str | None, stamp: tuple[str, int, int], scope: str | None) -> pl.DataFrame:
    """The control-chart rows of every weekly series in scope, cached per snapshot."""
    with data.open_reader(Path(home), source) as reader:
        return data.trend_frames(data.scored_sessions(reader, scope), data.queue_min_risk(reader))


@st.cache_data(show_spinner=False, max_entries=8)
def clinic_rules(clinics_file: str, mtime_ns: int) -> dict[str, RuleConfig]:
    """Each configured clinic's rule settings (for cutoff lines), re-read when clinics.toml changes."""
    try:
        return {cid: clinic.rules for cid, clinic in load_clinics(Path(clinics_file)).items()}
    except AllianceError:
        return {}


class Context:
    """Where this session reads from: home, snapshot (clinic or network) and the clinic in view."""

    def __init__(self, home: Path, clinic: str | None, viewer: Viewer | None = None) -> None:
        self.home = home
        self.viewer = viewer or local_viewer()  # whose name reviews are recorded under
        self.clinic = clinic  # fixed by --clinic: only this clinic's snapshot is ever opened
        self.scope = clinic  # the clinic in view; in a network dashboard the sidebar may narrow it
        self.stamp = data.snapshot_stamp(Warehouse(home / "warehouse.duckdb"), clinic)

    def get(self, name: str, *args: Any) -> Any:
        """A cached query (see LOADERS) on this session's snapshot."""
        return load(name, str(self.home), self.clinic, self.stamp, *args)

    def rules(self) -> dict[str, RuleConfig]:
        """Rule settings per configured clinic."""
        clinics_file = self.home / "clinics.toml"
        mtime = clinics_file.stat().st_mtime_ns if clinics_file.exists() else 0
        return clinic_rules(str(clinics_file), mtime)


def show_chart(where: Any, chart: alt.TopLevelMixin, key: str) -> None:
    """Draw an Altair chart from its spec without re-validating it on every rerun (the tests validate each builder)."""
    where.vega_lite_chart(chart.to_dict(validate=False), width="stretch", key=key)


def _flash() -> None:
    """Show (once) the outcome of the last review action."""
    kind, text = st.session_state.pop("flash", (None, None))
    if kind == "success":
        st.success(text)
    elif kind == "error":
        st.error(text)


def _open_dyad(dyad_id: str | None) -> None:
    """Switch to the dyad tab on this dyad (a callback: it runs before the tabs are drawn)."""
    if dyad_id:
        st.session_state["dyad"] = dyad_id
        st.session_state["page"] = "Dyad"


def _submit_review(home: str, allowed: list[str], by: str) -> None:
    """Apply the review form through flows.reviews.review_flag (the CLI's path) as the signed-in person."""
    flag_id = st.session_state.get("review_flag")
    status = str(st.session_state.get("review_status") or "acknowledged")
    note = (st.session_state.get("review_note") or "").strip() or None
    if not by:
        st.session_state["flash"] = ("error", "Reviews need a signed-in person; sign in again.")
        return
    if flag_id not in allowed:
        st.session_state["flash"] = ("error", "Pick one of this dyad's open or acknowledged flags.")
        return
    _apply_review(home, review_flag, "Flag", str(flag_id), status, by, note, "review_note")


def _apply_review(
    home: str,
    review: Callable[..., str],
    what: str,
    subject: str,
    status: str,
    by: str,
    note: str | None,
    key: str,
) -> None:
    """Run one review through flows.reviews (the CLI's path) with a short lock wait; the outcome becomes a flash."""
    settings = load_settings(Path(home))
    settings = settings.model_copy(update={"lock_timeout_s": min(settings.lock_timeout_s, REVIEW_LOCK_WAIT_S)})
    try:
        previous = review(settings, subject, status, by, note)
    except WarehouseBusy:
        st.session_state["flash"] = ("error", "The pipeline is writing right now; try again in a minute.")
        return
    except AllianceError as exc:
        st.session_state["flash"] = ("error", str(exc))
        return
    st.session_state["flash"] = ("success", f"{what} {subject}: {previous} → {status} (by {by}).")
    st.session_state[key] = ""  # the form's note field


def _open_case(case_id: str | None) -> None:
    """Go to the case page (a callback); the case id in the URL makes the page a link to share."""
    if case_id:
        st.query_params["case"] = case_id


def _close_case() -> None:
    """Back from the case page to the queue."""
    st.query_params.pop("case", None)
    st.session_state.pop("case_pick", None)
    # a fresh table: the browser would otherwise send the row picked before and open the case again
    st.session_state["queue_table_generation"] = st.session_state.get("queue_table_generation", 0) + 1


def _queue_filters(frame: pl.DataFrame, rules: list[str]) -> tuple[list[str], list[str], list[str], list[str], str]:
    """The queue's filters (therapist, rule, severity, status, dyad search), shared by the case and flag views."""
    f1, f2, f3, f4, f5 = st.columns([1.2, 1.2, 1, 1, 1.2])
    therapists = f1.multiselect("Therapist", sorted(frame["therapist_id"].unique()), key="f_therapist")
    chosen_rules = f2.multiselect("Rule", rules, key="f_rule")
    present = set(frame["severity"].unique())
    severities = f3.multiselect("Severity", [s for s in data.SEVERITIES if s in present], key="f_severity")
    statuses = f4.multiselect("Status", list(data.QUEUE_STATUSES), key="f_status")
    hint = (
        "dyad code or client ref"
        if "client_ref" in frame.columns and frame["client_ref"].is_not_null().any()
        else "dyad code"
    )
    search = f5.text_input("Search dyad", key="f_dyad", placeholder=hint)
    return therapists, chosen_rules, severities, statuses, search


def _case_label(case: dict[str, Any], refs: bool) -> str:
    """How a case reads in the picker: dyad (and client ref), therapist, risk, headline rule."""
    parts = [case["dyad_id"], case["client_ref"] if refs else None, case["therapist_id"]]
    return " · ".join(str(p) for p in [*parts, f"risk {case['risk_score']:.0f}", case["headline_rule"]] if p)


def queue_page(ctx: Context) -> None:
    """The review queue: one row per case (a dyad at risk), ranked by risk; the per-flag view on request."""
    if st.toggle("One row per flag", key="f_per_flag", help="Every open flag behind the cases, as evidence"):
        _flag_queue(ctx)
        return
    cases: pl.DataFrame = ctx.get("cases", ctx.scope)
    threshold = ctx.get("threshold")
    if cases.is_empty():
        st.success(f"No open case: no dyad has a risk of {threshold:g} or more.")
        return
    cols = st.columns(4)
    cols[0].metric("Cases in queue", cases.height)
    cols[1].metric("Still open", cases.filter(pl.col("status") == "open").height)
    cols[2].metric("Worse or back", cases.filter(pl.col("change") != "new").height)
    cols[3].metric("Queue threshold (risk)", f"{threshold:g}")
    rules = sorted(set(cases["rules"].explode().drop_nulls().to_list()))
    shown = data.filter_cases(cases, *_queue_filters(cases, rules))
    if shown.is_empty():
        st.info("No case matches these filters.")
        return
    pages = data.page_count(shown.height, PAGE_SIZE)
    if st.session_state.get("queue_page", 1) > pages:
        st.session_state["queue_page"] = 1  # the filters shrank the list under the current page
    st.caption(f"{shown.height} of {cases.height} cases · {PAGE_SIZE} per page · pick a row to open its case")
    page = st.pagination(pages, key="queue_page") if pages > 1 else 1
    refs = ctx.clinic is not None and cases["client_ref"].is_not_null().any()
    columns = [*(["clinic_id"] if ctx.clinic is None else []), "risk_score", "severity", "status", "dyad_id",
               *(["client_ref"] if refs else []), "therapist_id", "headline_reason", "change"]  # fmt: skip
    network = ctx.clinic is None
    row_px = CASE_ROW_PX + (20 if network else 0)  # the clinic column narrows the headline: one more line
    rows = data.page_of(shown, page, PAGE_SIZE)
    since = pl.col("change_session_date").cast(pl.String).fill_null("")
    change = pl.concat_str(
        pl.col("change").replace_strict(CHANGE_WORDS, default=pl.col("change")), since, separator=" "
    )
    event = st.dataframe(
        rows.with_columns(change.alias("change")).select(columns),
        hide_index=True,
        width="stretch",
        row_height=row_px,
        height=row_px * rows.height + ROW_PX + 3,  # the whole page, no inner scrolling
        key=f"queue_table_{st.session_state.get('queue_table_generation', 0)}",
        on_select="rerun",
        selection_mode="single-row",
        column_config={
            "clinic_id": st.column_config.TextColumn("clinic", width=80),
            "risk_score": st.column_config.ProgressColumn("risk", min_value=0, max_value=100, format="%.0f", width=60),
            "severity": st.column_config.TextColumn("severity", width=75),
            "status": st.column_config.TextColumn("status", width=90),
            "dyad_id": st.column_config.TextColumn("dyad", width=100),
            "client_ref": st.column_config.TextColumn("client ref", width=70),
            "therapist_id": st.column_config.TextColumn("therapist", width=80),
            # fixed widths that fit a laptop screen, so the headline is never pushed off to the right
            "headline_reason": st.column_config.TextColumn("headline", width=220 if network else 290),
            "change": st.column_config.TextColumn("change, since", width=135),
        },
    )
    selected = list(getattr(getattr(event, "selection", None), "rows", None) or [])
    if selected:
        _open_case(rows["case_id"][selected[0]])
        st.rerun()
    labels = {r["case_id"]: _case_label(r, refs) for r in shown.iter_rows(named=True)}
    pick, go = st.columns([3, 1], vertical_alignment="bottom")
    chosen = pick.selectbox("Open a case from this list", list(labels), format_func=labels.__getitem__, key="case_pick")
    go.button("Open case", on_click=_open_case, args=(chosen,), key="open_case", type="primary")


def _flag_queue(ctx: Context) -> None:
    """The per-flag view: open and acknowledged flags of queued dyads, ranked by risk, with filters and paging."""
    queue: pl.DataFrame = ctx.get("queue", ctx.scope)
    threshold = ctx.get("threshold")
    if queue.is_empty():
        st.success(f"The review queue is empty: no dyad has a risk of {threshold:g} or more.")
        return
    cols = st.columns(4)
    cols[0].metric("Flags in queue", queue.height)
    cols[1].metric("Dyads in queue", queue["dyad_id"].n_unique())
    cols[2].metric("Still open", queue.filter(pl.col("status") == "open").height)
    cols[3].metric("Queue threshold (risk)", f"{threshold:g}")
    f1, f2, f3, f4, f5 = st.columns([1.2, 1.2, 1, 1, 1.2])
    therapists = f1.multiselect("Therapist", sorted(queue["therapist_id"].unique()), key="f_therapist")
    rules = f2.multiselect("Rule", sorted(queue["rule"].unique()), key="f_rule")
    present = set(queue["severity"].unique())
    severities = f3.multiselect("Severity", [s for s in data.SEVERITIES if s in present], key="f_severity")
    statuses = f4.multiselect("Status", list(data.QUEUE_STATUSES), key="f_status")
    search = f5.text_input("Search dyad", key="f_dyad", placeholder="dyad code, e.g. d3f9")
    per_dyad = st.checkbox("One row per dyad (its top flag)", key="f_per_dyad")
    shown = data.filter_queue(queue, therapists, rules, severities, statuses, search)
    if per_dyad:
        shown = data.one_per_dyad(shown)
    if shown.is_empty():
        st.info("No flag matches these filters.")
        return
    pages = data.page_count(shown.height, PAGE_SIZE)
    if st.session_state.get("queue_page", 1) > pages:
        st.session_state["queue_page"] = 1  # the filters shrank the list under the current page
    st.caption(f"{shown.height} of {queue.height} flags · {PAGE_SIZE} per page")
    page = st.pagination(pages, key="queue_page") if pages > 1 else 1
    columns = ["rank", "risk_score", "severity", "rule", "status", "therapist_id", "dyad_id", "age_days", "reason"]
    columns += ["flags"] if per_dyad else []
    columns += ["clinic_id"] if ctx.clinic is None else []
    rows = data.page_of(shown, page, PAGE_SIZE).select([*columns, "flag_id"])
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        height=ROW_PX * (rows.height + 1) + 3,  # the whole page, no inner scrolling
        key="queue_table",
        column_config={
            "risk_score": st.column_config.ProgressColumn("risk", min_value=0, max_value=100, format="%.0f"),
            "therapist_id": "therapist",
            "dyad_id": "dyad",
            "reason": st.column_config.TextColumn("reason", width="large"),
            "age_days": st.column_config.NumberColumn("age (days)"),
            "clinic_id": "clinic",
            "flag_id": "flag",
        },
    )
    tops = shown.unique("dyad_id", keep="first", maintain_order=True)
    labels = {
        r["dyad_id"]: f"{r['dyad_id']} · {r['therapist_id']} · risk {r['risk_score']:.0f} · {r['rule']}"
        for r in tops.iter_rows(named=True)
    }
    pick, go = st.columns([3, 1], vertical_alignment="bottom")
    chosen = pick.selectbox(
        "Open a dyad from this list", list(labels), format_func=labels.__getitem__, key="queue_pick"
    )
    go.button("Open dyad", on_click=_open_dyad, args=(chosen,), key="open_dyad", type="primary")


def _dyad_charts(ctx: Context, dyad: dict[str, Any], sessions: pl.DataFrame, flags: pl.DataFrame) -> None:
    """One trajectory chart per alliance instrument, then ORS (outcome) when the dyad has it."""
    rules = ctx.rules().get(dyad["clinic_id"])
    events = data.rupture_marks(flags, sessions)
    codes = sessions["instrument"].unique().to_list()
    ordered = [c for c in codes if instrument(c).construct == "alliance"] + [
        c for c in codes if instrument(c).construct != "alliance"
    ]
    for code in ordered:
        alliance = instrument(code).construct == "alliance"
        chart = charts.trajectory_chart(
            data.instrument_sessions(sessions, code),
            code,
            data.cutoff_for(code, rules),
            data.flag_marks(flags, code),
            events.filter(pl.col("instrument") == code),
            band=alliance,
        )
        show_chart(st, chart, f"chart_{code}")
        if alliance:
            st.caption(
                "Shaded: the dyad's baseline (mean of its first 3 sessions) ± the SD the rupture rule uses; "
                "a rupture is repaired when a score is back above the band's lower edge. Red dots: rule evidence."
            )


def _review_form(ctx: Context, flags: pl.DataFrame) -> None:
    """Acknowledge or resolve one of the dyad's flags, with the reviewer's name and a note."""
    actionable = flags.filter(pl.col("status").is_in(list(data.QUEUE_STATUSES)))
    if actionable.is_empty():
        st.caption("No open or acknowledged flag to review.")
        return
    labels = {
        r["flag_id"]: f"{r['rule']} · {r['instrument']} · {r['severity']} · {r['status']} · {r['flag_id']}"
        for r in actionable.iter_rows(named=True)
    }
    with st.form("review", border=True):
        st.selectbox("Flag", list(labels), format_func=labels.__getitem__, key="review_flag")
        st.radio("Set status to", ["acknowledged", "resolved"], horizontal=True, key="review_status")
        st.caption(f"Recorded as {ctx.viewer.identity}")  # the signed-in identity: no name to type
        st.text_area("Note", key="review_note", placeholder="what was decided or done", height=80)
        st.form_submit_button(
            "Save review", on_click=_submit_review, args=(str(ctx.home), list(labels), ctx.viewer.identity),
            type="primary",
        )  # fmt: skip


def _submit_case_review(home: str, case_id: str, by: str) -> None:
    """Apply the case form through flows.reviews.review_case (the CLI's path) as the signed-in person."""
    status = str(st.session_state.get("case_status") or "acknowledged")
    note = (st.session_state.get("case_note") or "").strip() or None
    if not by:
        st.session_state["flash"] = ("error", "Reviews need a signed-in person; sign in again.")
        return
    _apply_review(home, review_case, "Case", case_id, status, by, note, "case_note")


def _case_review_form(ctx: Context, case: dict[str, Any]) -> None:
    """Acknowledge or resolve the whole case (every flag behind it) in one action, with a note."""
    if case["status"] == "closed":
        st.caption(
            f"This case is closed ({case['close_reason'] or 'left the queue'}); a new case opens if the dyad returns."
        )
        return
    choices = [s for s in ("acknowledged", "resolved") if s != case["status"]]
    with st.form("case_review", border=True):
        st.radio("Set the case to", choices, horizontal=True, key="case_status")
        st.caption(
            f"Applies to the {len(case['flag_ids'] or [])} flag(s) behind it · recorded as {ctx.viewer.identity}"
        )
        st.text_area("Note", key="case_note", placeholder="what was decided or done", height=80)
        st.form_submit_button(
            "Save case review",
            on_click=_submit_case_review,
            args=(str(ctx.home), case["case_id"], ctx.viewer.identity),
            type="primary",
        )


def case_page(ctx: Context, case_id: str) -> None:
    """One case at its own URL (?case=<id>): header, the rules behind it, the trajectory, reviews, one action."""
    st.button("← Back to the queue", on_click=_close_case, key="back_to_queue")
    case = ctx.get("case", case_id, ctx.clinic)
    if case is None or not ctx.viewer.may_see(case["clinic_id"]):
        st.error(f"Case {case_id!r} is not among the clinics open to {ctx.viewer.identity}.")
        return
    _flash()
    who = f"dyad {case['dyad_id']}" + (f" · client {case['client_ref']}" if case["client_ref"] else "")
    st.header(f"Case {case['case_id']}")
    st.caption(
        f"{who} · therapist {case['therapist_id']}" + (f" · clinic {case['clinic_id']}" if ctx.clinic is None else "")
    )
    cols = st.columns(5)
    cols[0].metric("Status", case["status"])
    cols[1].metric("Severity", case["severity"])
    cols[2].metric("Risk", f"{case['risk_score']:.0f}")
    cols[3].metric("Change", CHANGE_WORDS.get(case["change"], case["change"]).removesuffix(", since"))
    cols[4].metric("Since (session date)", str(case["change_session_date"] or case["opened_session_date"]))
    st.markdown(f"**{case['headline_reason'] or case['headline_rule']}**")
    flags: pl.DataFrame = ctx.get("case_flags", case_id, ctx.clinic)
    st.subheader(f"Rules behind it ({flags.height})")
    st.dataframe(
        flags,
        hide_index=True,
        width="stretch",
        key="case_flags",
        row_height=EVIDENCE_ROW_PX,
        height=EVIDENCE_ROW_PX * flags.height + ROW_PX + 3,  # every rule behind the case, no inner scrolling
        column_config={
            "rule": st.column_config.TextColumn("rule", width=120),
            "severity": st.column_config.TextColumn("severity", width=75),
            "status": st.column_config.TextColumn("status", width=90),
            "instrument": st.column_config.TextColumn("instrument", width=80),
            "first_session_date": st.column_config.DateColumn("from", width=90),
            "last_session_date": st.column_config.DateColumn("to", width=90),
            "reason": st.column_config.TextColumn("reason", width=400),  # whole, wrapped
            "flag_id": st.column_config.TextColumn("flag", width=130),
        },
    )
    st.subheader("Review the case")
    _case_review_form(ctx, case)
    dyad = ctx.get("summary", case["dyad_id"], ctx.clinic)
    if dyad is not None:
        sessions: pl.DataFrame = ctx.get("trajectory", case["dyad_id"], ctx.clinic)
        history: pl.DataFrame = ctx.get("flags", case["dyad_id"], ctx.clinic)
        st.subheader("Trajectory")
        _dyad_charts(ctx, dyad, sessions, history)
    st.subheader("Review history")
    reviews: pl.DataFrame = ctx.get("case_history", case_id, ctx.clinic)
    if reviews.is_empty():
        st.caption("No review yet.")
    else:
        st.dataframe(reviews, hide_index=True, width="stretch", key="case_history")
    if ctx.clinic is None:
        st.caption("Review notes are kept out of the network snapshot; open the clinic's dashboard to read them.")


def dyad_page(ctx: Context) -> None:
    """One dyad: trajectory charts, its flags and their review history, and the review form."""
    options: pl.DataFrame = ctx.get("dyads", ctx.scope)
    if options.is_empty():
        st.info("No dyads yet.")
        return
    codes = options["dyad_id"].to_list()
    if st.session_state.get("dyad") not in set(codes):
        st.session_state.pop("dyad", None)  # a dyad of another clinic or a stale link: ask again
    # plain codes, no format_func: the URL (?page=Dyad&dyad=<code>) then stays a stable link for alerts
    dyad_id = st.selectbox(
        "Dyad", codes, index=None, key="dyad", bind="query-params",
        placeholder="pick or type a dyad code (riskiest first)",
    )  # fmt: skip
    if dyad_id is None:
        st.info("Pick a dyad above, or open one from the queue.")
        return
    dyad = ctx.get("summary", dyad_id, ctx.scope)
    sessions: pl.DataFrame = ctx.get("trajectory", dyad_id, ctx.scope)
    flags: pl.DataFrame = ctx.get("flags", dyad_id, ctx.scope)
    cols = st.columns(5)
    cols[0].metric("Therapist", dyad["therapist_id"])
    cols[1].metric("Risk", f"{dyad['risk_score']:.0f}")
    cols[2].metric("In queue", "yes" if dyad["in_queue"] else "no")
    cols[3].metric("Sessions", dyad["sessions"])
    cols[4].metric("Last session", str(dyad["last_session_date"]))
    if dyad["client_ref"]:
        st.caption(f"Client {dyad['client_ref']} (this clinic's own reference)")
    if dyad["ongoing_rules"]:
        st.caption("Ongoing rules: " + ", ".join(dyad["ongoing_rules"]))
    _flash()
    _dyad_charts(ctx, dyad, sessions, flags)
    st.subheader("Flags")
    st.dataframe(
        flags.drop("resolution"), hide_index=True, width="stretch", key="flag_history",
        column_config={"reason": st.column_config.TextColumn("reason", width="large")},
    )  # fmt: skip
    st.subheader("Reviews")
    reviews: pl.DataFrame = ctx.get("reviews", dyad_id, ctx.scope)
    if reviews.is_empty():
        st.caption("No review yet.")
    else:
        st.dataframe(reviews, hide_index=True, width="stretch", key="review_history")
    if ctx.clinic is None:
        st.caption("Review notes are kept out of the network snapshot; open the clinic's dashboard to read them.")
    st.subheader("Review a flag")
    _review_form(ctx, flags)


def _first(leading: list[Any], rest: list[Any]) -> list[Any]:
    """``rest`` reordered so that the items of ``leading`` (in its order) come first, without repeats."""
    ahead = [x for x in dict.fromkeys(leading) if x in set(rest)]
    return ahead + [x for x in rest if x not in set(ahead)]


def trends_page(ctx: Context) -> None:
    """Weekly control charts (clinic, then one therapist at a time) and the funnel plot of queue share by caseload."""
    trend = load_trends(str(ctx.home), ctx.clinic, ctx.stamp, ctx.scope)
    if trend.is_empty():
        st.info("No scored sessions yet, so no weekly series.")
        return
    c1, c2, c3 = st.columns(3)
    clinics = _first(data.out_of_control(trend)["clinic_id"].to_list(), sorted(trend["clinic_id"].unique()))
    clinic = ctx.scope or c1.selectbox("Clinic", clinics, key="trend_clinic")
    if ctx.scope:
        c1.metric("Clinic", clinic)
    mine = trend.filter(pl.col("clinic_id") == clinic)
    alarms = data.out_of_control(mine)
    # the series out of control come first, so the tab opens on them
    codes = _first(alarms["instrument"].to_list(), sorted(mine["instrument"].unique()))
    code = c2.selectbox("Instrument", codes, key="trend_instrument")
    flagged = alarms.filter((pl.col("level") == "therapist") & (pl.col("instrument") == code))["therapist_id"]
    therapists = _first(flagged.to_list(), sorted(mine.filter(pl.col("level") == "therapist")["therapist_id"].unique()))
    marked = set(flagged.to_list())
    therapist = c3.selectbox(
        "Therapist",
        therapists,
        key="trend_therapist",
        format_func=lambda t: f"{t} · out of control" if t in marked else t,
    )
    if alarms.height:
        named = [f"{r['therapist_id'] or clinic} ({r['instrument']}, {r['metric'].replace('_', ' ')})"
                 for r in alarms.iter_rows(named=True)]  # fmt: skip
        st.warning("Out of control in the last 4 weeks: " + "; ".join(named))
    else:
        st.success("No series left its limits in the worrying direction in the last 4 weeks.")
    st.caption(
        "EWMA (λ 0.2) with ±3σ limits from each series' first 8 weeks. Big points leave the limits: "
        "red in the worrying direction (alliance down, flagged share up), green in the good one."
    )
    for level, who in (("clinic", None), ("therapist", therapist)):
        rows = mine.filter((pl.col("level") == level) & (pl.col("instrument") == code))
        if who is not None:
            rows = rows.filter(pl.col("therapist_id") == who)
        left, right = st.columns(2)
        name = clinic if who is None else who
        for column, metric, title in (
            (left, "mean_score", f"{name}: weekly mean {code}"),
            (right, "flagged_share", f"{name}: weekly flagged share"),
        ):
            series = rows.filter(pl.col("metric") == metric)
            chart = charts.control_chart(series, title, metric)
            show_chart(column, chart, f"trend_{level}_{metric}")
    loads: pl.DataFrame = ctx.get("caseloads", ctx.scope)
    if loads.is_empty():
        return
    points, p = data.funnel_points(loads)
    limits = data.funnel_limits(p, int(points.select(pl.col("active_dyads").max()).item() or 1))
    show_chart(st, charts.funnel_chart(points, limits, p), "funnel")
    st.caption(
        "Each point is a therapist: the share of their active dyads in the review queue. Lines: p ± 2σ and ± 3σ "
        "with σ = √(p(1−p)/n); points inside the funnel differ from the overall share by chance alone."
    )
    outside = points.filter(pl.col("position") != "within limits")
    if outside.height:
        st.dataframe(outside, hide_index=True, width="stretch", key="funnel_outside")


def health_page(ctx: Context) -> None:
    """Exports per clinic and day, quarantined rows by rule, rejected files, and clinics whose exports stopped."""
    days = st.columns(3)[0].number_input("Warn when a clinic sent no export for N days", 1, 90, 3, key="stale_days")
    expected = [ctx.clinic] if ctx.clinic else list(ctx.rules())
    settings_clinics = expected if ctx.scope is None else [ctx.scope]
    with data.open_reader(ctx.home, ctx.clinic) as reader:
        silence = data.export_silence(reader, settings_clinics, int(days), ctx.scope, datetime.now(UTC))
    stopped = silence.filter(pl.col("stopped"))["clinic_id"].to_list()
    if stopped:
        st.warning(f"No export for {days} days or more: {', '.join(stopped)}")
    else:
        st.success(f"Every clinic sent an export within the last {days} days.")
    st.dataframe(
        silence, hide_index=True, width="stretch", key="silence",
        column_config={"clinic_id": "clinic", "last_export": "last export", "days_since": "days since",
                       "stopped": "stopped?"},
    )  # fmt: skip
    exports: pl.DataFrame = ctx.get("exports", ctx.scope)
    if exports.height:
        show_chart(st, charts.exports_chart(exports), "exports_chart")
    counts: pl.DataFrame = ctx.get("quarantine", ctx.scope)
    st.subheader("Quarantined ratings")
    if counts.is_empty():
        st.caption("No rating was quarantined.")
    else:
        show_chart(st, charts.quarantine_chart(counts), "quarantine_chart")
        st.dataframe(counts, hide_index=True, width="stretch", key="quarantine_table")
    rejected: pl.DataFrame = ctx.get("rejected", ctx.scope)
    if rejected.height:
        st.subheader("Files rejected or quarantined whole")
        st.dataframe(rejected, hide_index=True, width="stretch", key="rejected")


def _sidebar(ctx: Context) -> bool:
    """Scope and freshness; returns False when there is nothing to show yet."""
    st.sidebar.title("Alliance Watch")
    if ctx.clinic is not None:
        st.sidebar.markdown(f"Clinic **{ctx.clinic}**")
    if not ctx.stamp[0]:
        return False
    clinics: list[str] = ctx.get("clinics")
    if not clinics:
        return False
    if ctx.clinic is None:
        choice = st.sidebar.selectbox("Clinic", ["All clinics", *clinics], key="scope")
        ctx.scope = None if choice == "All clinics" else choice
    stamp = datetime.fromtimestamp(ctx.stamp[1] / 1e9, UTC).strftime("%Y-%m-%d %H:%M UTC")
    st.sidebar.caption(f"Snapshot of {stamp}: {Path(ctx.stamp[0]).name}")
    st.sidebar.button("Refresh", key="refresh")  # any rerun re-reads a newer snapshot
    return True


def local_viewer() -> Viewer:
    """Without sign-in only this machine reaches the dashboard: reviews carry the local account's name."""
    return Viewer(identity=f"local:{getpass.getuser()}", clinics=frozenset(), network=True)


def _sign_in_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def _viewer(home: Path) -> Viewer:
    """Who is looking: the signed-in person and their clinics, or the local account; stops the page otherwise."""
    if not _sign_in_configured():
        address = str(st.get_option("server.address") or "")
        if not is_loopback(address):
            st.error(
                "No identity provider is configured, so this dashboard serves only on this machine: start it with "
                "`alliance dashboard` (127.0.0.1), or configure sign-in (ALLIANCE_OIDC_*)."
            )
            st.stop()
        st.sidebar.warning(
            "No sign-in configured: this dashboard serves only on this machine (127.0.0.1). "
            f"Reviews are recorded as {local_viewer().identity}."
        )
        return local_viewer()
    if not getattr(st.user, "is_logged_in", False):  # absent (not False) when no one has signed in yet
        st.title("Alliance Watch")
        st.write("Sign in with your organisation's account to see the clinics you supervise.")
        st.button("Sign in", on_click=st.login, type="primary", key="sign_in")
        st.stop()
    viewer = viewer_of(st.user.to_dict(), load_access(home / "clinics.toml"))
    st.sidebar.caption(f"Signed in as {viewer.identity}")
    st.sidebar.button("Sign out", on_click=st.logout, key="sign_out")
    if not viewer.network and not viewer.clinics:
        st.warning(
            f"Signed in as {viewer.identity}, but no clinic is open to this account. Ask the network's "
            "administrator to add it under [access] in clinics.toml."
        )
        st.stop()
    return viewer


def _clinic_for(viewer: Viewer, fixed: str | None) -> str | None:
    """The clinic this session opens: a network role may see all (None), others only their own; stops if refused."""
    requested = st.query_params.get("clinic") or fixed
    if requested is not None and (not viewer.may_see(requested) or (fixed is not None and requested != fixed)):
        st.error(f"{viewer.identity} has no access to clinic {requested!r}.")
        st.stop()
    if viewer.network:
        return requested
    mine = sorted(viewer.clinics) if fixed is None else [fixed]
    if len(mine) == 1:
        return mine[0]
    return str(st.sidebar.selectbox("Clinic", mine, key="clinic", bind="query-params"))


def main() -> None:
    st.set_page_config(page_title="Alliance Watch", layout="wide")
    home = Path(os.environ.get(HOME_ENV) or load_settings().home)
    try:
        viewer = _viewer(home)
    except AllianceError as exc:
        st.error(f"Sign-in is misconfigured: {exc}")
        return
    ctx = Context(home, _clinic_for(viewer, os.environ.get(CLINIC_ENV) or None), viewer)
    try:
        if not _sidebar(ctx):
            where = f"clinic {ctx.clinic}" if ctx.clinic else str(home)
            st.info(
                f"No data yet for {where}. Exports appear here after the pipeline has loaded them "
                "(`alliance ingest`, or `alliance demo --home DIR` for sample data)."
            )
            return
        case_id = st.query_params.get("case")
        if case_id:
            case_page(ctx, case_id)
            return
        tabs = st.tabs(list(PAGES), key="page", bind="query-params")
        for tab, draw in zip(tabs, (queue_page, dyad_page, trends_page, health_page), strict=True):
            if tab.open:  # only the open tab runs its queries
                with tab:
                    draw(ctx)
    except (data.NoSnapshot, AllianceError, OSError) as exc:
        st.error(f"The dashboard cannot read its data: {exc}")


if __name__ == "__main__":  # streamlit runs this file as __main__; importing it draws nothing
    main()
