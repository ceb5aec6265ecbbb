"""Altair chart builders: frames from dashboards.data in, chart specs out (each layer named, so tests can find it)."""

from __future__ import annotations

import math

import altair as alt
import polars as pl

from alliance.instruments import instrument

FLAG_RED = "#c0392b"
CALM = "#4c78a8"
MUTED = "#7f8c8d"
SEVERITY_ORDER = ("critical", "high", "medium", "low", "advisory")
HEIGHT = 280


def _short_rules(rules: str) -> str:
    """A label that stays short on the chart: the first rule and how many more (all of them are in the tooltip)."""
    names = [r for r in rules.split(", ") if r]
    return names[0] if len(names) <= 1 else f"{names[0]} +{len(names) - 1}"


def _score_domain(sessions: pl.DataFrame, low: float, high: float, cutoff: float | None, band: bool) -> list[float]:
    """From just below the lowest score, band edge or cutoff up to the scale's top, so small changes show."""
    floors = [cutoff] if cutoff is not None else []
    for column in ("score", "band_low") if band else ("score",):
        if column in sessions.columns and sessions[column].drop_nulls().len():
            floors.append(float(sessions[column].min()))  # type: ignore[arg-type]
    if not floors:
        return [low, high]
    margin = (high - low) / 20
    return [max(low, math.floor(min(floors) - margin)), high]


def trajectory_chart(
    sessions: pl.DataFrame,
    code: str,
    cutoff: float | None,
    opened: pl.DataFrame,
    events: pl.DataFrame,
    band: bool = True,
) -> alt.LayerChart:
    """One instrument's scores per session: cutoff, baseline band, flagged sessions, rule starts, rupture/repair."""
    spec = instrument(code)
    scale = alt.Scale(domain=_score_domain(sessions, spec.total_min, spec.total_max, cutoff, band))

    def y(field: str) -> alt.Y:
        return alt.Y(f"{field}:Q", scale=scale, title=code)  # one scale on every layer, or 0 creeps back in

    numbers = sessions["session_number"].drop_nulls().to_list() or [1]
    x = alt.X(
        "session_number:Q",
        title="session",
        axis=alt.Axis(tickMinStep=1, format="d"),
        # the dyad's sessions, not from 0, with half a session either side so edge labels are not cut by the axis
        scale=alt.Scale(domain=[min(numbers) - 0.5, max(numbers) + 0.5], nice=False),
    )
    evidence = pl.when(pl.col("rules").list.len() > 0).then(pl.lit("rule evidence")).otherwise(pl.lit("none"))
    data = sessions.with_columns(evidence.alias("evidence"))
    base = alt.Chart(data).encode(x=x)
    tooltip = [
        alt.Tooltip("session_number:Q", title="session"),
        alt.Tooltip("session_date:T", title="date"),
        alt.Tooltip("score:Q", format=".1f"),
        alt.Tooltip("delta:Q", format="+.1f", title="change"),
        *(alt.Tooltip(f"{item}:Q", format=".1f") for item in spec.items if item in data.columns),
        alt.Tooltip("rules_text:N", title="rules with evidence"),
        alt.Tooltip("risk:Q", format=".0f"),
    ]
    layers: list[alt.Chart] = []
    if band and data.height:
        layers.append(
            base.mark_area(opacity=0.15, color=CALM, clip=True)
            .encode(y=y("band_low"), y2="band_high:Q")
            .properties(name="baseline_band")
        )
        layers.append(base.mark_line(color=CALM, strokeDash=[2, 2]).encode(y=y("baseline")).properties(name="baseline"))
    if cutoff is not None:
        line = pl.DataFrame({"cutoff": [cutoff], "label": [f"cutoff {cutoff:g}"], "session_number": [max(numbers)]})
        # named in the legend, not on the plot, where it ran into the baseline and the last session's labels
        rule = (
            alt.Chart(line)
            .mark_rule(color=FLAG_RED)
            .encode(
                y=y("cutoff"),
                strokeDash=alt.StrokeDash("label:N", scale=alt.Scale(range=[[6, 4]]), legend=alt.Legend(title="line")),
            )
        )
        layers.append(rule.properties(name="cutoff"))
    layers.append(
        base.mark_line(color="#2c3e50").encode(y=y("score"))
        .properties(name="score")
    )  # fmt: skip
    layers.append(
        base.mark_point(filled=True, size=70)
        .encode(
            y=y("score"),
            color=alt.Color(
                "evidence:N",
                scale=alt.Scale(domain=["none", "rule evidence"], range=[MUTED, FLAG_RED]),
                legend=alt.Legend(title="session"),
            ),
            tooltip=tooltip,
        )
        .properties(name="sessions")
    )
    starts = opened.join(data.select("session_number", "score"), on="session_number", how="inner")
    if starts.height:
        starts = starts.sort("session_number").with_columns(
            pl.col("opened").map_elements(_short_rules, pl.String).alias("label")
        )
        # alternate below/above the line so labels of neighbouring sessions do not overlap
        for name, rows, dy in (
            ("flag_starts", starts.gather_every(2), 16),
            ("flag_starts_above", starts.gather_every(2, offset=1), -14),
        ):
            if rows.height:
                layers.append(
                    alt.Chart(rows)
                    .mark_text(dy=dy, fontSize=10, color=FLAG_RED)
                    .encode(x=x, y=y("score"), text="label:N", tooltip=[alt.Tooltip("opened:N", title="flags opened")])
                    .properties(name=name)
                )
    if events.height:
        shapes = alt.Scale(domain=["rupture", "repair"], range=["triangle-down", "triangle-up"])
        colors = alt.Scale(domain=["rupture", "repair"], range=["#e67e22", "#27ae60"])
        marks = alt.Chart(events).encode(x=x, y=y("score"))
        layers.append(
            marks.mark_point(size=220, filled=True, yOffset=-14)
            .encode(
                shape=alt.Shape("event:N", scale=shapes, legend=alt.Legend(title="rupture")),
                color=alt.Color("event:N", scale=colors, legend=None),  # one legend (shapes), not two
            )
            .properties(name="rupture_repair")
        )
    chart = alt.LayerChart(layer=layers, title=f"{code}: score per session", height=HEIGHT, width="container")
    return chart.resolve_scale(color="independent")


def control_chart(rows: pl.DataFrame, title: str, metric: str) -> alt.LayerChart:
    """An EWMA control chart of one weekly series: observed values, the EWMA, its limits and out-of-limit weeks."""
    share = metric == "flagged_share"
    fmt = ".0%" if share else ".1f"
    y_title = "flagged share" if share else "mean alliance"
    base = alt.Chart(rows).encode(x=alt.X("week:T", title="week"))
    tooltip = [
        alt.Tooltip("week:T"),
        alt.Tooltip("value:Q", format=fmt, title=y_title),
        alt.Tooltip("ewma:Q", format=fmt, title="EWMA"),
        alt.Tooltip("lower:Q", format=fmt),
        alt.Tooltip("upper:Q", format=fmt),
    ]
    observed = base.mark_line(point=alt.OverlayMarkDef(color=MUTED), color=MUTED, opacity=0.6).encode(
        y=alt.Y("value:Q", title=y_title, axis=alt.Axis(format=fmt), scale=alt.Scale(zero=False)), tooltip=tooltip
    )
    ewma = base.mark_line(color=CALM, strokeWidth=2.5).encode(y="ewma:Q", tooltip=tooltip)
    upper = base.mark_line(color=FLAG_RED, strokeDash=[5, 3], interpolate="step-after").encode(y="upper:Q")
    lower = base.mark_line(color=FLAG_RED, strokeDash=[5, 3], interpolate="step-after").encode(y="lower:Q")
    bad = "high" if share else "low"  # a low flagged share or a high alliance is good news: green, not red
    good = "low" if share else "high"
    signals = (
        alt.Chart(rows.filter(pl.col("signal").is_not_null()))
        .mark_point(size=140, filled=True)
        .encode(
            x="week:T",
            y="ewma:Q",
            color=alt.Color(
                "signal:N",
                scale=alt.Scale(domain=[bad, good], range=[FLAG_RED, "#27ae60"]),
                legend=alt.Legend(title="out of limits"),
            ),
            tooltip=[*tooltip, alt.Tooltip("signal:N")],
        )
    )
    return alt.LayerChart(
        layer=[
            observed.properties(name="observed"),
            ewma.properties(name="ewma"),
            upper.properties(name="upper_limit"),
            lower.properties(name="lower_limit"),
            signals.properties(name="signals"),
        ],
        title=title,
        height=220,
        width="container",
    )


def _funnel_top(points: pl.DataFrame, p: float) -> float:
    """Top of the share axis: the 3σ limit at the smallest caseload shown (or the highest share), with room above."""
    if points.is_empty():
        return 1.0
    smallest = max(int(points["active_dyads"].min()), 1)  # type: ignore[arg-type]
    highest = max(float(points["flagged_share"].max()), p + 3 * math.sqrt(p * (1 - p) / smallest))  # type: ignore[arg-type]
    return min(1.0, round(highest * 1.25 + 0.01, 2))


def funnel_chart(points: pl.DataFrame, limits: pl.DataFrame, p: float) -> alt.LayerChart:
    """Flagged share against caseload with binomial limits around the overall share, so small caseloads read fairly."""
    bounds = limits.unpivot(index=["n", "z"], on=["lower", "upper"], variable_name="bound", value_name="share")
    bounds = bounds.with_columns(
        pl.format("{}σ {}", pl.col("z").cast(pl.Int64), pl.col("bound")).alias("series"),
        pl.format("{}σ limits", pl.col("z").cast(pl.Int64)).alias("limit"),
    )
    top = _funnel_top(points, p)
    x = alt.X("n:Q", title="caseload (active dyads)")
    lines = (
        alt.Chart(bounds)
        .mark_line(color=MUTED, clip=True)
        .encode(
            x=x,
            y=alt.Y(
                "share:Q",
                title="share of caseload in the queue",
                axis=alt.Axis(format=".0%"),
                scale=alt.Scale(domain=[0, top]),
            ),
            detail="series:N",
            strokeDash=alt.StrokeDash("limit:N", legend=alt.Legend(title="binomial limits")),
        )
    )
    overall = pl.DataFrame({"p": [p], "label": [f"overall {p:.0%}"]})
    centre = alt.Chart(overall).mark_rule(color=CALM).encode(y="p:Q")
    centre_label = (
        alt.Chart(overall)
        .mark_text(align="left", dx=4, dy=-6, color=CALM)
        .encode(y="p:Q", text="label:N", x=alt.value(0))
    )
    dots = (
        alt.Chart(points)
        .mark_circle(size=90, opacity=0.85)
        .encode(
            x=alt.X("active_dyads:Q"),
            y=alt.Y("flagged_share:Q"),
            color=alt.Color(
                "position:N",
                scale=alt.Scale(
                    domain=["within limits", "above 2σ", "above 3σ", "below 2σ"],
                    range=[CALM, "#e67e22", FLAG_RED, "#27ae60"],
                ),
                legend=alt.Legend(title="therapist"),
            ),
            tooltip=[
                alt.Tooltip("clinic_id:N", title="clinic"),
                alt.Tooltip("therapist_id:N", title="therapist"),
                alt.Tooltip("active_dyads:Q", title="active dyads"),
                alt.Tooltip("flagged_dyads:Q", title="in queue"),
                alt.Tooltip("flagged_share:Q", format=".0%", title="share"),
                alt.Tooltip("z:Q", format=".1f"),
            ],
        )
    )
    return alt.LayerChart(
        layer=[
            lines.properties(name="limits"),
            centre.properties(name="overall"),
            centre_label.properties(name="overall_label"),
            dots.properties(name="therapists"),
        ],
        title="Funnel plot: queue share by caseload",
        height=320,
        width="container",
    )


def exports_chart(days: pl.DataFrame) -> alt.Chart:
    """Exports received per day, stacked by clinic, with their status and row counts on hover."""
    return (
        alt.Chart(days)
        .mark_bar(size=28)
        .encode(
            x=alt.X(
                "yearmonthdate(day):O",
                title="day received",
                axis=alt.Axis(format="%b %d", formatType="time", labelAngle=0),
            ),
            y=alt.Y("sum(exports):Q", title="exports", axis=alt.Axis(format="d", tickMinStep=1)),
            color=alt.Color("clinic_id:N", title="clinic"),
            tooltip=[
                alt.Tooltip("clinic_id:N", title="clinic"),
                alt.Tooltip("day:T"),
                alt.Tooltip("status:N"),
                alt.Tooltip("exports:Q"),
                alt.Tooltip("rows_total:Q", title="rows"),
                alt.Tooltip("rows_quarantined:Q", title="quarantined"),
            ],
        )
        .properties(name="exports", title="Exports per day", height=220, width="container")
    )


def quarantine_chart(counts: pl.DataFrame) -> alt.Chart:
    """Quarantined ratings per rule, most frequent on top."""
    return (
        alt.Chart(counts)
        .mark_bar()
        .encode(
            y=alt.Y("rule:N", sort="-x", title=None, axis=alt.Axis(labelLimit=320, labelOverlap=False)),
            x=alt.X("sum(ratings):Q", title="ratings quarantined", axis=alt.Axis(format="d", tickMinStep=1)),
            color=alt.Color("clinic_id:N", title="clinic"),
            tooltip=[alt.Tooltip("clinic_id:N", title="clinic"), "rule:N", "ratings:Q"],
        )
        .properties(name="quarantine", title="Quarantined ratings by rule", height=alt.Step(22), width="container")
    )
