"""Checked rule trees → Ibis expressions, so one rule runs set-based on any backend.

The compiler knows nothing about tables: the caller passes `resolve_field` (a name → a
column) and `resolve_call` (e.g. `count("Product Viewed", days=30)` → a precomputed
column). Semantics are SQL's three-valued logic; `compile_condition` turns an unknown
(NULL) answer into false, so a rule about a missing value simply does not match.

Untyped ("any") values usually arrive as text extracted from JSON; when one meets a number
or a boolean it is `try_cast`, so `properties.price > 10` works and a non-numeric price is
NULL rather than a query error.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import ibis
import ibis.expr.types as ir

from keepers.domain.rules import (
    ARITHMETIC,
    LOGIC,
    Binary,
    Call,
    Field,
    FunctionSpec,
    In,
    IsNull,
    ListLiteral,
    Literal,
    LiteralValue,
    Node,
    Unary,
    plain_literal,
    walk,
)

FieldResolver = Callable[[str], ir.Value]
CallResolver = Callable[[Call], ir.Value]

_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def compile_rule(node: Node, resolve_field: FieldResolver, resolve_call: CallResolver) -> ir.Value:
    """The rule as an Ibis value with SQL semantics (NULL stays NULL)."""
    return _Compiler(resolve_field, resolve_call).value(node)


def compile_condition(
    node: Node, resolve_field: FieldResolver, resolve_call: CallResolver
) -> ir.BooleanValue:
    """The rule as a filter: true or false, never NULL, so unknown means 'not matched'."""
    return _as_bool(compile_rule(node, resolve_field, resolve_call)).fill_null(False)


def literal_value(node: Node) -> LiteralValue:
    """The Python value of a literal argument (`"Product Viewed"`, `30`, `-1`), for the
    engine reading a call's arguments."""
    literal = plain_literal(node)
    if literal is None:
        raise ValueError(f"not a literal: {node!r}")
    return literal.value


def call_arguments(call: Call, spec: FunctionSpec) -> dict[str, LiteralValue]:
    """A checked call's arguments by parameter name, positional and keyword alike, so the
    engine need not care how the user wrote them; omitted optionals are absent."""
    names = [name for name, _ in spec.params + spec.optional]
    bound = {name: literal_value(arg) for name, arg in zip(names, call.args, strict=False)}
    bound.update((name, literal_value(arg)) for name, arg in call.kwargs)
    return bound


def explain_terms(node: Node) -> list[Node]:
    """The leaf conditions joined by and/or/not, in source order, so an explanation can
    show which part of a rule held for a customer and which did not."""
    if isinstance(node, Binary) and node.op in LOGIC:
        return explain_terms(node.left) + explain_terms(node.right)
    if isinstance(node, Unary) and node.op == "not":
        return explain_terms(node.operand)
    return [node]


def references(node: Node) -> tuple[set[str], list[Call]]:
    """Every field name and every call (in source order) a rule uses, so the engine can
    precompute aggregates and order segments that depend on other segments."""
    nodes = list(walk(node))
    names = {n.name for n in nodes if isinstance(n, Field)}
    return names, [n for n in nodes if isinstance(n, Call)]


class _Compiler:
    """One method per node type; values are coerced only where types meet."""

    def __init__(self, resolve_field: FieldResolver, resolve_call: CallResolver) -> None:
        self.resolve_field = resolve_field
        self.resolve_call = resolve_call

    def value(self, node: Node) -> ir.Value:
        if isinstance(node, Literal):
            return _literal(node.value)
        if isinstance(node, Field):
            return self.resolve_field(node.name)
        if isinstance(node, Call):
            return self.resolve_call(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, In):
            return self.membership(node)
        if isinstance(node, IsNull):
            operand = self.value(node.operand)
            return operand.notnull() if node.negated else operand.isnull()
        raise TypeError(f"cannot compile {type(node).__name__} on its own")

    def unary(self, node: Unary) -> ir.Value:
        operand = self.value(node.operand)
        return ~_as_bool(operand) if node.op == "not" else -_as_number(operand)

    def binary(self, node: Binary) -> ir.Value:
        left, right = self.value(node.left), self.value(node.right)
        if node.op in LOGIC:
            left, right = _as_bool(left), _as_bool(right)
            return left & right if node.op == "and" else left | right
        if node.op in ARITHMETIC:
            return _arithmetic(node.op, _as_number(left), _as_number(right))
        return _COMPARE[node.op](*_coerce(left, right))

    def membership(self, node: In) -> ir.BooleanValue:
        values = _list_values(node.items)
        operand = self.value(node.operand)
        if all(_is_number(v) for v in values):
            operand = _as_number(operand)
        elif operand.type().is_numeric():
            operand = operand.cast("string")
        elif operand.type().is_json():
            operand = operand.str
        return operand.notin(values) if node.negated else operand.isin(values)


def _is_number(value: LiteralValue) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _list_values(items: ListLiteral) -> list[LiteralValue]:
    return [literal_value(item) for item in items.items]


def _literal(value: LiteralValue) -> ir.Value:
    """Explicit wide types: Ibis would make `3` an int8, and `100 + 100` would overflow."""
    if value is None:
        return ibis.null()
    if isinstance(value, bool):
        return ibis.literal(value, type="boolean")
    if isinstance(value, int):
        return ibis.literal(value, type="int64")
    if isinstance(value, float):
        return ibis.literal(value, type="float64")
    return ibis.literal(value, type="string")


def _arithmetic(op: str, left: ir.NumericValue, right: ir.NumericValue) -> ir.NumericValue:
    """`/` is float division, and dividing by zero is unknown (NULL), never inf or an error."""
    if op == "/":
        return left.cast("float64") / right.nullif(0)
    return _ARITHMETIC[op](left, right)


def _textual(value: ir.Value) -> bool:
    dtype = value.type()
    return dtype.is_string() or dtype.is_json()


def _as_number(value: ir.Value) -> ir.Value:
    """Numbers pass; text (an untyped trait or property) becomes float64 or NULL."""
    return value.try_cast("float64") if _textual(value) or value.type().is_null() else value


def _as_bool(value: ir.Value) -> ir.BooleanValue:
    """Booleans pass; anything else (untyped text, NULL) is read as a boolean or NULL."""
    return value if value.type().is_boolean() else value.try_cast("boolean")


def _coerce(left: ir.Value, right: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Make both sides of a comparison comparable: text meets numbers, booleans, times."""
    return _towards(left, right), _towards(right, left)


def _towards(value: ir.Value, other: ir.Value) -> ir.Value:
    target = other.type()
    if not _textual(value) or _textual(other):
        return value.str if value.type().is_json() and target.is_string() else value
    if target.is_numeric():
        return value.try_cast("float64")
    if target.is_boolean() or target.is_temporal():
        return value.try_cast(target)
    return value
