"""The lifecycle funnel from the stage history: how many customers reached each stage of the
main path, the conversion rate to the next, the median time it took, and time in stage —
overall, by cohort (month the customer entered the funnel) or by acquisition channel.

A customer has *reached* stage k when they were ever in a main-path stage at position ≥ k
(skipping a stage between two compute runs still counts as passing it). Side stages
(at risk, churned, reactivated) are not on the path; they appear in time-in-stage.
"""

from __future__ import annotations

from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.analytics.base import (
    STAGE_HISTORY,
    Context,
    active_events,
    need_history,
    ratio,
    seconds_between,
    stays,
)
from keepers.engine.plan import json_text
from keepers.errors import InvalidInput

DAY = 86_400.0
GROUPINGS = ("none", "cohort", "channel")
SEARCH_HOSTS = ("google.", "bing.", "duckduckgo.", "yahoo.", "baidu.", "yandex.", "ecosia.")


def _main_path(ctx: Context) -> list[tuple[str, int]]:
    stages = [s for s in ctx.definitions.stage_model.stages if s.funnel]
    return [(s.key, s.funnel or 0) for s in sorted(stages, key=lambda s: s.funnel or 0)]


def acquisition_channel(as_of: ir.TimestampValue, jsonb: bool) -> ir.Table:
    """Each customer's channel, from the context of their first event: the campaign medium
    (utm_medium), else a referral, else a search engine or another referring site, else
    direct."""
    events = active_events(as_of, jsonb=jsonb)
    medium = json_text(events.context, ["campaign", "medium"])
    referral = json_text(events.context, ["referrer", "type"])
    page_referrer = json_text(events.context, ["page", "referrer"]).lower()
    searched = ibis.or_(*(page_referrer.contains(h) for h in SEARCH_HOSTS))
    channel = ibis.cases(
        (medium.notnull() & (medium != ""), medium),
        (referral.notnull() & (referral != ""), referral),
        (searched, ibis.literal("search")),
        (page_referrer.notnull() & (page_referrer != ""), ibis.literal("referring_site")),
        else_=ibis.literal("direct"),
    )
    return events.group_by(events.customer_id).aggregate(channel=channel.argmin(events.timestamp))


def _reached(ctx: Context, path: list[tuple[str, int]]) -> Any:
    positions = dict(path)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        h = STAGE_HISTORY.filter(STAGE_HISTORY.moved_at <= as_of)
        position = h.to_stage.cases(*positions.items(), else_=ibis.null("int64"))
        h = h.mutate(position=position).filter(lambda t: t.position.notnull())
        return h.group_by(h.customer_id).aggregate(
            **{f"reach_{i}": h.moved_at.min(where=h.position >= p) for i, (_, p) in enumerate(path)}
        )

    return build


def members(ctx: Context, by: str) -> Any:
    """(customer_id, group, reach_0 … reach_n): when each customer first reached each stage."""
    path = _main_path(ctx)
    reached = _reached(ctx, path)
    jsonb = ctx.tx.dialect.name == "postgres"

    def build(as_of: ir.TimestampValue) -> ir.Table:
        t = reached(as_of)
        if by == "cohort":
            month = t.reach_0.truncate("M")
            return t.mutate(group=month.strftime("%Y-%m"))
        if by == "channel":
            channels = acquisition_channel(as_of, jsonb)
            t = t.left_join(channels, "customer_id").drop("customer_id_right")
            return t.mutate(group=t.channel.coalesce("direct")).drop("channel")
        return t.mutate(group=ibis.literal("all"))

    return path, build


def funnel(ctx: Context, by: str = "none") -> dict[str, Any]:
    if by not in GROUPINGS:
        raise InvalidInput(f"by must be one of {', '.join(GROUPINGS)}, not '{by}'")
    first, _ = need_history(ctx.tx)
    path, build_members = members(ctx, by)
    if not path:
        raise InvalidInput("the stage model has no main-path stages (no stage has a funnel place)")

    def counts(as_of: ir.TimestampValue) -> ir.Table:
        m = build_members(as_of)
        metrics: dict[str, Any] = {"customers": m.count()}
        for i in range(len(path)):
            metrics[f"reached_{i}"] = m[f"reach_{i}"].count()
            if i + 1 < len(path):
                gap = seconds_between(m[f"reach_{i + 1}"], m[f"reach_{i}"]) / DAY
                metrics[f"days_{i}"] = gap.median()
        return m.group_by("group").aggregate(**metrics).order_by("group")

    groups = ctx.rows(("funnel", tuple(path), by), counts)
    labels = {s.key: s.label or s.key for s in ctx.definitions.stage_model.stages}
    result_groups = [{"group": g["group"], "stages": _stage_rows(g, path, labels)} for g in groups]
    overall = (
        _overall(groups, path, labels)
        if by != "none"
        else result_groups[0]["stages"]
        if result_groups
        else []
    )
    return {
        "as_of": ctx.as_of.isoformat(),
        "history_since": first.isoformat(),
        "by": by,
        "stages": overall,
        "overall_conversion": ratio(overall[-1]["reached"], overall[0]["reached"])
        if overall
        else None,
        "groups": result_groups if by != "none" else [],
        "time_in_stage": time_in_stage(ctx),
    }


def _stage_rows(row: dict, path: list[tuple[str, int]], labels: dict[str, str]) -> list[dict]:
    out = []
    for i, (key, position) in enumerate(path):
        reached = row[f"reached_{i}"]
        nxt = row.get(f"reached_{i + 1}")
        days = row.get(f"days_{i}")
        out.append(
            {
                "stage": key,
                "label": labels[key],
                "position": position,
                "reached": reached,
                "converted_to_next": nxt,
                "conversion_rate": ratio(nxt, reached) if nxt is not None else None,
                "median_days_to_next": round(days, 2) if days is not None else None,
            }
        )
    return out


def _overall(groups: list[dict], path: list[tuple[str, int]], labels: dict[str, str]) -> list[dict]:
    total = {f"reached_{i}": sum(g[f"reached_{i}"] for g in groups) for i in range(len(path))}
    rows = _stage_rows(total, path, labels)
    for row in rows:
        row["median_days_to_next"] = None  # medians do not add up across groups
    return rows


def time_in_stage(ctx: Context) -> list[dict[str, Any]]:
    """Per stage: customers in it now, completed stays and their median length in days."""

    def build(as_of: ir.TimestampValue) -> ir.Table:
        s = stays(as_of)
        days = seconds_between(s.left_at, s.entered_at) / DAY
        current_days = seconds_between(as_of, s.entered_at) / DAY
        return s.group_by(s.stage).aggregate(
            current=s.left_at.isnull().sum(),
            completed_stays=s.left_at.count(),
            median_days_in_stage=days.median(),
            median_days_so_far=current_days.median(where=s.left_at.isnull()),
        )

    rows = {r["stage"]: r for r in ctx.rows(("time_in_stage",), build)}
    order = ctx.definitions.stage_model.funnel_order()
    out = []
    for key in order + sorted(set(rows) - set(order) - {None}):
        r = rows.get(key, {})
        out.append(
            {
                "stage": key,
                "current": int(r.get("current") or 0),
                "completed_stays": int(r.get("completed_stays") or 0),
                "median_days_in_stage": _days(r.get("median_days_in_stage")),
                "median_days_so_far": _days(r.get("median_days_so_far")),
            }
        )
    return out


def _days(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)


def who(
    ctx: Context, *, stage: str, status: str = "reached", by: str = "none", group: str | None = None
) -> Any:
    """The customers behind a funnel number: who reached `stage`, who went on to the next
    stage (`converted`) and who did not (`dropped`)."""
    path, build_members = members(ctx, by)
    keys = [k for k, _ in path]
    if stage not in keys:
        raise InvalidInput(f"stage '{stage}' is not on the main path ({', '.join(keys)})")
    if status not in ("reached", "converted", "dropped"):
        raise InvalidInput(f"status must be reached, converted or dropped, not '{status}'")
    i = keys.index(stage)
    if status != "reached" and i + 1 == len(keys):
        raise InvalidInput(f"'{stage}' is the last stage: nobody converts beyond it")

    def build(as_of: ir.TimestampValue) -> ir.Table:
        m = build_members(as_of)
        cond = m[f"reach_{i}"].notnull()
        if status == "converted":
            cond &= m[f"reach_{i + 1}"].notnull()
        elif status == "dropped":
            cond &= m[f"reach_{i + 1}"].isnull()
        if group is not None:
            cond &= m.group == ibis.literal(group)
        return m.filter(cond).select("customer_id", reached_at=m[f"reach_{i}"])

    return ("funnel_who", tuple(path), by, stage, status, group), build
