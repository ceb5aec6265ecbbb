"""Alliance Watch supervisor dashboard (Streamlit): queue, dyad, trends, data health, from read-only snapshots."""

from __future__ import annotations

import getpass
import os
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
from flows.reviews import review_flag

PAGES = ("Queue", "Dyad", "Trends", "Data health")
PAGE_SIZE = 25
ROW_PX = 35  # st.dataframe's row height
REVIEW_LOCK_WAIT_S = 20.0  # a click should not hang for the pipeline's 10-minute lock wait
LOADERS: dict[str, Any] = {
    "queue": data.load_queue,
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
    settings = load_settings(Path(home))
    settings = settings.model_copy(update={"lock_timeout_s": min(settings.lock_timeout_s, REVIEW_LOCK_WAIT_S)})
    try:
        previous = review_flag(settings, flag_id, status, by, note)
    except WarehouseBusy:
        st.session_state["flash"] = ("error", "The pipeline is writing right now; try again in a minute.")
        return
    except AllianceError as exc:
        st.session_state["flash"] = ("error", str(exc))
        return
    st.session_state["flash"] = ("success", f"Flag {flag_id}: {previous} → {status} (by {by}).")
    st.session_state["review_note"] = ""


def queue_page(ctx: Context) -> None:
    """The review queue: open and acknowledged flags of queued dyads, ranked by risk, with filters and paging."""
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
    per_dyad = st.toggle("One row per dyad (its top flag)", key="f_per_dyad")
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


def trends_page(ctx: Context) -> None:
    """Weekly control charts (clinic, then one therapist at a time) and the funnel plot of queue share by caseload."""
    trend = load_trends(str(ctx.home), ctx.clinic, ctx.stamp, ctx.scope)
    if trend.is_empty():
        st.info("No scored sessions yet, so no weekly series.")
        return
    c1, c2, c3 = st.columns(3)
    clinics = sorted(trend["clinic_id"].unique())
    clinic = ctx.scope or c1.selectbox("Clinic", clinics, key="trend_clinic")
    if ctx.scope:
        c1.metric("Clinic", clinic)
    mine = trend.filter(pl.col("clinic_id") == clinic)
    codes = sorted(mine["instrument"].unique())
    code = c2.selectbox("Instrument", codes, key="trend_instrument")
    therapists = sorted(mine.filter(pl.col("level") == "therapist")["therapist_id"].unique())
    therapist = c3.selectbox("Therapist", therapists, key="trend_therapist")
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
        tabs = st.tabs(list(PAGES), key="page", bind="query-params")
        for tab, draw in zip(tabs, (queue_page, dyad_page, trends_page, health_page), strict=True):
            if tab.open:  # only the open tab runs its queries
                with tab:
                    draw(ctx)
    except (data.NoSnapshot, AllianceError, OSError) as exc:
        st.error(f"The dashboard cannot read its data: {exc}")


if __name__ == "__main__":  # streamlit runs this file as __main__; importing it draws nothing
    main()
