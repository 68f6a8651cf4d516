"""Net Promoter Score by period, by lifecycle stage, by segment (and by persona on request),
with response counts and free-text feedback.

Answers are `NPS Survey Answered` events with `properties.score` (0–10; a number or numeric
text, read the way the `nps` trait reads it) and an optional `properties.comment`. Promoters
answer 9–10, passives 7–8, detractors 0–6;

    NPS = 100 × (promoters − detractors) ÷ responses        (−100 … +100)

with passives counted in the responses (Reichheld 2003, "The One Number You Need to Grow",
HBR; NPS is a trademark of Bain & Company, Fred Reichheld and Satmetrix).

**The last answer per customer per period counts**: a customer who answers twice in a
month is one response that month — their latest — so a keen or annoyed customer cannot
weigh twice. Answers without a valid score are left out and counted (`ignored_answers`).
Periods are whole calendar periods (UTC), the last one ending before the as-of moment, as
in the other reports. `overall` is the whole reported window with the same rule (each
customer's last answer in it), and the stage, segment and persona breakdowns use those
same answers:

- *stage* — the stage the customer was in when they answered (from the stage history), so
  "NPS in retention" means how customers felt while in retention;
- *segment* — the segments they were a member of when they answered (a customer in several
  segments counts in each);
- *persona* (`by=persona`) — the persona the customer belongs to as of the report; this
  fits the personas' k-means model first (seconds on a large store), hence opt-in.
  Customers without an order have no persona and are grouped under `null`.

Promoters feed advocacy and detractors flag risk in the lifecycle through the built-in `nps`
trait (each customer's last score ever): the default stage model has `loyalty: orders >= 3
and (referrals_made >= 1 or nps >= 9)`, the default segments `promoters: nps >= 9` and
`detractors: nps <= 6`, and any stage or segment rule can use it, e.g. `at_risk: nps <= 6
and orders >= 1`, with a journey on `segment_entered: detractors` creating a support task.

`who(group=promoters|passives|detractors, in_period=…, stage=…, segment=…)` lists exactly
the counted answers behind a number: one row per customer, with the score and comment.
"""

from __future__ import annotations

from typing import Any

import ibis
import ibis.expr.types as ir

from keepers.analytics.base import PERIODS, Context, Period, complete_periods, stays
from keepers.engine.plan import TS, events_table, json_text
from keepers.errors import InvalidInput

NPS_EVENT = "NPS Survey Answered"
GROUPS = ("promoters", "passives", "detractors")
ALL = "all"
BYS = ("none", "persona")
MAX_SAMPLES = 50
STAGED = ibis.table(  # `counted` as the report stages it ("group" is reserved in SQL)
    {
        "customer_id": "int64",
        "idx": "int64",
        "period": "string",
        "answered_at": TS,
        "score": "float64",
        "comment": "string",
        "answer_group": "string",
        "stage": "string",
    },
    name="_kp_nps",
)
COUNTED = STAGED.rename(group="answer_group")
STAGED_ARROW = STAGED.schema().to_pyarrow()  # a column of nulls comes back typeless
MEMBERSHIPS = ibis.table(
    {"segment": "string", "customer_id": "int64", "entered_at": TS, "exited_at": TS},
    name="segment_memberships",
)


def group_of(score: ir.FloatingValue) -> ir.StringValue:
    return ibis.cases((score >= 9, "promoters"), (score >= 7, "passives"), else_="detractors")


def _number(text: ir.StringValue) -> ir.FloatingValue:
    """Numeric text as a number, anything else as null. (Ibis' `try_cast` is a plain CAST
    on PostgreSQL, which fails the whole query on a score like "n/a".)"""
    numeric = text.re_search(r"^\s*[-+]?[0-9]+(\.[0-9]+)?\s*$").fill_null(False)
    return ibis.cases((numeric, text.cast("float64")), else_=ibis.null("float64"))


def answers(jsonb: bool) -> Any:
    """Every NPS answer up to as-of: (customer_id, answered_at, score, comment, valid)."""

    def build(as_of: ir.TimestampValue) -> ir.Table:
        e = events_table(jsonb=jsonb)
        e = e.filter(e.event == NPS_EVENT, e.timestamp <= as_of)
        score = _number(json_text(e.properties, ["score"]))
        return e.select(
            "customer_id",
            answered_at=e.timestamp,
            score=score,
            comment=e.properties["comment"].str,
            valid=score.between(0, 10).fill_null(False),
        )

    return build


def counted(jsonb: bool) -> Any:
    """The answers that count: each customer's last valid answer in each staged period
    (the last staged period is the whole window), with its group and the stage then."""
    build_answers = answers(jsonb)

    def build(as_of: ir.TimestampValue) -> ir.Table:
        a = build_answers(as_of)
        a = a.filter(a.valid)
        p = PERIODS
        x = a.join(p, (a.answered_at >= p.starts_at) & (a.answered_at < p.ends_at))
        order = [ibis.desc(x.answered_at), ibis.desc(x.score)]
        x = x.mutate(n=ibis.row_number().over(group_by=[x.customer_id, x.idx], order_by=order))
        last = x.filter(x.n == 0)
        s = stays(as_of, only=last.select("customer_id"))
        joined = last.left_join(
            s,
            (last.customer_id == s.customer_id)
            & (s.entered_at <= last.answered_at)
            & (s.left_at.isnull() | (s.left_at > last.answered_at)),
        )
        return joined.select(
            customer_id=last.customer_id,
            idx=last.idx,
            period=last.period,
            answered_at=last.answered_at,
            score=last.score,
            comment=last.comment,
            group=group_of(last.score),
            stage=s.stage,
        )

    return build


def _summary(t: ir.Table, *keys: str) -> ir.Table:
    return t.group_by(list(keys)).aggregate(
        responses=t.count(),
        promoters=(t["group"] == "promoters").sum(),
        passives=(t["group"] == "passives").sum(),
        detractors=(t["group"] == "detractors").sum(),
        average_score=t.score.mean(),
    )


def _row(r: dict[str, Any]) -> dict[str, Any]:
    n = int(r.get("responses") or 0)
    p, m, d = (int(r.get(g) or 0) for g in GROUPS)
    average = r.get("average_score")
    return {
        "responses": n,
        "promoters": p,
        "passives": m,
        "detractors": d,
        "promoters_share": round(p / n, 4) if n else None,
        "detractors_share": round(d / n, 4) if n else None,
        "nps": round(100 * (p - d) / n, 1) if n else None,
        "average_score": None if average is None else round(float(average), 2),
    }


def _spans(ctx: Context, period: str, periods: int) -> tuple[list[Period], int]:
    """The reported periods plus the whole window as one more, staged; its index."""
    spans = complete_periods(ctx.as_of, period, periods)
    window = Period(ALL, spans[0].starts_at, spans[-1].ends_at)
    ctx.stage_periods([*spans, window])
    return spans, len(spans)


def nps(
    ctx: Context,
    period: str = "month",
    periods: int = 12,
    samples: int = 5,
    by: str = "none",
    k: int = 0,
) -> dict[str, Any]:
    if not 0 <= samples <= MAX_SAMPLES:
        raise InvalidInput(f"samples must be between 0 and {MAX_SAMPLES}, not {samples}")
    if by not in BYS:
        raise InvalidInput(f"by must be one of {', '.join(BYS)} for nps, not '{by}'")
    spans, whole = _spans(ctx, period, periods)
    jsonb = ctx.tx.dialect.name == "postgres"
    build = counted(jsonb)
    all_answers = answers(jsonb)
    key = ("nps", jsonb, whole)
    # The counted answers take a scan of every event and a window over the stage
    # history; worked out once and staged, the breakdowns below only read those rows.
    found = ctx.arrow((*key, "counted"), build)
    found = found.rename_columns(
        ["answer_group" if c == "group" else c for c in found.column_names]
    )
    ctx.tx.stage(STAGED.get_name(), found.select(STAGED.columns).cast(STAGED_ARROW))

    def per_period() -> ir.Table:
        return _summary(COUNTED, "idx")

    def per_stage() -> ir.Table:
        t = COUNTED
        return _summary(t.filter(t.idx == ibis.literal(whole)), "stage")

    def per_segment() -> ir.Table:
        t = _with_segments(COUNTED)
        return _summary(t.filter(t.idx == ibis.literal(whole)), "segment")

    def raw(as_of: ir.TimestampValue) -> ir.Table:
        a, p = all_answers(as_of), PERIODS
        a = a.join(p, (a.answered_at >= p.starts_at) & (a.answered_at < p.ends_at))
        a = a.filter(a.idx == ibis.literal(whole))
        return a.aggregate(answers=a.count(), ignored=(~a.valid).sum())

    def feedback() -> ir.Table:
        t = COUNTED
        t = t.filter(t.idx == ibis.literal(whole), t.comment.notnull() & (t.comment != ""))
        order = [ibis.desc(t.answered_at), t.customer_id]
        t = t.mutate(n=ibis.row_number().over(group_by=t["group"], order_by=order))
        return t.filter(t.n < samples).select(
            "group", "customer_id", "score", "answered_at", "stage", "comment"
        )

    by_idx = {r["idx"]: r for r in ctx.staged_rows((*key, "periods"), per_period)}
    totals = ctx.rows((*key, "raw"), raw)[0]
    rows = [{**s.to_dict(), **_row(by_idx.get(i, {}))} for i, s in enumerate(spans)]
    result: dict[str, Any] = {
        "as_of": ctx.as_of.isoformat(),
        "period": period,
        "counting": "each customer's last answer per period; promoters 9-10, passives 7-8, "
        "detractors 0-6; NPS = % promoters - % detractors",
        "overall": {"period": ALL, **_row(by_idx.get(whole, {}))},
        "answers": int(totals["answers"] or 0),
        "ignored_answers": int(totals["ignored"] or 0),
        "periods": rows,
        "by_stage": _ordered(
            ctx.staged_rows((*key, "stages"), per_stage), "stage", _stage_order(ctx)
        ),
        "by_segment": _ordered(
            ctx.staged_rows((*key, "segments"), per_segment), "segment", _segment_order(ctx)
        ),
    }
    if by == "persona":
        result["by_persona"] = _by_persona(ctx, whole, k)
    if samples:
        found = ctx.staged_rows((*key, "feedback", samples), feedback)
        result["feedback"] = {
            g: [
                {k2: _plain(v) for k2, v in r.items() if k2 != "group"}
                for r in found
                if r["group"] == g
            ]
            for g in GROUPS
        }
    return result


def _with_segments(t: ir.Table) -> ir.Table:
    m = MEMBERSHIPS
    j = t.join(
        m,
        (t.customer_id == m.customer_id)
        & (m.entered_at <= t.answered_at)
        & (m.exited_at.isnull() | (m.exited_at > t.answered_at)),
    )
    return j.select(*[t[c] for c in t.columns], segment=m.segment)


def _stage_order(ctx: Context) -> list[str]:
    return list(ctx.definitions.stage_model.funnel_order())


def _segment_order(ctx: Context) -> list[str]:
    return [s.key for s in ctx.definitions.segments]


def _ordered(rows: list[dict[str, Any]], name: str, order: list[str]) -> list[dict[str, Any]]:
    """Rows in the definitions' order, then unknown keys alphabetically, then none."""
    found = {r[name]: r for r in rows}
    keys = [k for k in order if k in found]
    keys += sorted(k for k in found if k is not None and k not in order)
    keys += [None] if None in found else []
    return [{name: k, **_row(found[k])} for k in keys]


def _by_persona(ctx: Context, whole: int, k: int) -> list[dict[str, Any]]:
    from keepers.analytics import personas

    fitted = personas.fit(ctx, k)
    names = {p["persona"]: p["name"] for p in personas._report(ctx, fitted)["personas"]}
    _stage_personas(ctx, fitted)

    def per_persona() -> ir.Table:
        t = COUNTED.filter(COUNTED.idx == ibis.literal(whole))
        a = personas.ASSIGNED
        j = t.left_join(a, t.customer_id == a.customer_id)
        return _summary(j.select(*[t[c] for c in t.columns], persona=a.persona), "persona")

    rows = ctx.staged_rows(("nps_persona", whole), per_persona)
    ordered = sorted(rows, key=lambda r: (r["persona"] is None, r["persona"] or 0))
    return [{"persona": r["persona"], "name": names.get(r["persona"]), **_row(r)} for r in ordered]


def _stage_personas(ctx: Context, fitted: Any) -> None:
    import pyarrow as pa

    from keepers.analytics import personas

    table = pa.table(
        {
            "customer_id": pa.array(fitted.customer_ids, pa.int64()),
            "persona": pa.array(fitted.persona, pa.int64()),
        }
    )
    ctx.tx.stage(personas.ASSIGNED.get_name(), table)


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 2)
    return value


def who(
    ctx: Context,
    *,
    group: str | None = None,
    in_period: str = ALL,
    stage: str | None = None,
    segment: str | None = None,
    period: str = "month",
    periods: int = 12,
) -> Any:
    """The customers whose answers a number counted: a group (or all responses) in one
    period (or `all`, the whole window), optionally within a stage or segment."""
    if group is not None and group not in GROUPS:
        raise InvalidInput(f"group must be one of {', '.join(GROUPS)}, not '{group}'")
    spans, whole = _spans(ctx, period, periods)
    labels = [s.label for s in spans]
    if in_period != ALL and in_period not in labels:
        raise InvalidInput(
            f"in_period must be '{ALL}' or one of the reported periods "
            f"({labels[0]} … {labels[-1]}), not '{in_period}'"
        )
    idx = whole if in_period == ALL else labels.index(in_period)
    build_counted = counted(ctx.tx.dialect.name == "postgres")

    def build(as_of: ir.TimestampValue) -> ir.Table:
        t = build_counted(as_of)
        if segment is not None:
            t = _with_segments(t)
            t = t.filter(t.segment == ibis.literal(segment))
        conds = [t.idx == ibis.literal(idx)]
        if group is not None:
            conds.append(t["group"] == ibis.literal(group))
        if stage is not None:
            conds.append(t.stage == ibis.literal(stage))
        return t.filter(*conds).select(
            "customer_id", "period", "answered_at", "score", "group", "stage", "comment"
        )

    jsonb = ctx.tx.dialect.name == "postgres"
    return ("nps_who", jsonb, idx, group, stage, segment), build
