"""The rule language: parsing without eval, friendly errors at exact spans, and compiled
rules run on real DuckDB with SQL's NULL semantics."""

from __future__ import annotations

import ibis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepers.domain.rules import (
    Binary,
    Call,
    Field,
    FunctionSpec,
    In,
    IsNull,
    ListLiteral,
    Literal,
    Scope,
    Unary,
    check,
    parse,
    shape,
    source_of,
    walk,
)
from keepers.engine.compile import (
    call_arguments,
    compile_condition,
    compile_rule,
    explain_terms,
    literal_value,
    references,
)
from keepers.errors import RuleError

COUNT = FunctionSpec(
    "count",
    (("event", "string"),),
    (("days", "number"),),
    returns="number",
    help="how many times the customer did the event",
)
IN_SEGMENT = FunctionSpec("in_segment", (("segment", "string"),), returns="bool")
SEGMENT = Scope(
    fields={
        "orders": "number",
        "days_since_last_order": "number",
        "revenue": "number",
        "nps": "number",
        "stage": "string",
        "signed_up": "bool",
        "first_seen": "timestamp",
    },
    prefixes={"traits": "any"},
    functions={"count": COUNT, "in_segment": IN_SEGMENT},
    what="segment rule",
)
EVENTS = Scope(
    fields={"event": "string", "timestamp": "timestamp"},
    prefixes={"properties": "any", "context": "any"},
    what="trait filter",
)


def error_of(source: str, scope: Scope = SEGMENT) -> RuleError:
    with pytest.raises(RuleError) as caught:
        check(parse(source), source, scope)
    return caught.value


def flagged(error: RuleError) -> str:
    """The exact text the error points at."""
    return error.source[error.position : error.position + error.length]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("source", "scope"),
    [
        ("orders >= 2 and days_since_last_order <= 90", SEGMENT),
        ('count("Product Viewed", days=30) > 3', SEGMENT),
        ('traits.plan == "pro"', SEGMENT),
        ('in_segment("vip")', SEGMENT),
        ("not signed_up or (revenue / orders) > 50.5", SEGMENT),
        ('stage in ["retention", "loyalty"]', SEGMENT),
        ("nps is not null and nps >= 9", SEGMENT),
        ('properties.category == "Coffee" and properties.price > 10', EVENTS),
        ("true", SEGMENT),
    ],
)
def test_the_documented_examples_parse_and_check_as_conditions(source, scope):
    assert check(parse(source), source, scope) in ("bool", "any")


def test_and_binds_tighter_than_or():
    assert shape(parse("a or b and c")) == shape(
        Binary("or", Field("a"), Binary("and", Field("b"), Field("c")))
    )


def test_not_applies_to_a_whole_comparison():
    assert shape(parse("not orders > 2")) == shape(
        Unary("not", Binary(">", Field("orders"), Literal(2)))
    )


def test_not_binds_tighter_than_and():
    assert shape(parse("not a and b")) == shape(Binary("and", Unary("not", Field("a")), Field("b")))


def test_multiplication_binds_tighter_than_addition_and_both_associate_left():
    assert shape(parse("a - b - c * d / e")) == shape(
        Binary(
            "-",
            Binary("-", Field("a"), Field("b")),
            Binary("/", Binary("*", Field("c"), Field("d")), Field("e")),
        )
    )


def test_unary_minus_binds_tightest():
    assert shape(parse("-a * 2 > -1")) == shape(
        Binary(">", Binary("*", Unary("-", Field("a")), Literal(2)), Unary("-", Literal(1)))
    )


def test_parentheses_override_precedence_and_their_span_includes_them():
    source = "(a or b) and c"
    node = parse(source)
    assert shape(node) == shape(Binary("and", Binary("or", Field("a"), Field("b")), Field("c")))
    assert source_of(node.left, source) == "(a or b)"
    assert source_of(node, source) == source


def test_in_and_not_in_take_a_list():
    node = parse('stage not in ["a", "b"]')
    assert isinstance(node, In)
    assert node.negated is True
    assert shape(node.items) == shape(ListLiteral((Literal("a"), Literal("b"))))
    assert parse("orders in [1, 2]").negated is False


def test_is_null_and_is_not_null():
    assert shape(parse("nps is null")) == shape(IsNull(Field("nps"), negated=False))
    assert shape(parse("nps is not null")) == shape(IsNull(Field("nps"), negated=True))


def test_comments_and_newlines_are_ignored():
    source = "# loyal customers\norders >= 2  # at least two\n  and nps >= 9 # happy\n"
    assert shape(parse(source)) == shape(parse("orders >= 2 and nps >= 9"))


def test_strings_take_either_quote_and_backslash_escapes():
    assert parse(r'"say \"hi\"\n"').value == 'say "hi"\n'
    assert parse(r"'it\'s \\ fine'").value == "it's \\ fine"
    assert parse("'a \"quoted\" word'").value == 'a "quoted" word'


def test_numbers_are_ints_or_floats_and_keywords_are_literals():
    assert parse("3").value == 3
    assert isinstance(parse("3").value, int)
    assert parse("2.5").value == 2.5
    assert [parse(w).value for w in ("true", "false", "null")] == [True, False, None]


def test_keywords_are_case_sensitive_so_capitalised_ones_are_fields():
    assert parse("True") == Field("True", 0, 4)


def test_dotted_fields_keep_their_full_name():
    assert parse("context.campaign.source") == Field("context.campaign.source", 0, 23)


def test_calls_keep_positional_and_keyword_arguments_and_where_keywords_start():
    source = 'count("Product Viewed", days = 30)'
    node = parse(source)
    assert isinstance(node, Call)
    assert shape(node) == shape(
        Call("count", (Literal("Product Viewed"),), (("days", Literal(30)),))
    )
    assert node.keyword_starts == (source.index("days"),)
    assert (node.start, node.end) == (0, len(source))


def test_every_node_knows_its_exact_span():
    source = "orders >= 2 and stage in ['a'] and nps is not null"
    spans = [source_of(n, source) for n in walk(parse(source))]
    assert spans == [
        source,
        "orders >= 2 and stage in ['a']",
        "orders >= 2",
        "orders",
        "2",
        "stage in ['a']",
        "stage",
        "['a']",
        "'a'",
        "nps is not null",
        "nps",
    ]


# --------------------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("source", "message", "text"),
    [
        ("orders >= 2)", "unexpected ')' at column 12", ")"),
        ('nps >= "abc', "unterminated string starting at column 8", '"abc'),
        ("orders >= 2 and", "expected an expression after 'and'", "and"),
        (
            "orders >= 2 and )",
            "unexpected ')' at column 17; expected an expression after 'and'",
            ")",
        ),
        ("a < b < c", "'a < b < c': comparisons cannot be chained; use 'and'", "a < b < c"),
        ("a == b in [1]", "'a == b in [1]': comparisons cannot be chained", "a == b in [1]"),
        ("orders @ 2", "unknown character '@' at column 8", "@"),
        ("a && b", "unknown character '&' at column 3; use 'and'", "&"),
        ("!a", "use 'not'", "!"),
        (r'"a\tb"', "unknown escape '\\t'", "\\t"),
        ("(orders > 1", "missing ')' to close '(' at column 1", "("),
        ('count("a"', "missing ')' to close '(' at column 6", "("),
        ('count("a" 3)', "unexpected '3' at column 11; expected ',' or ')'", "3"),
        ('stage in ["a" "b"]', 'unexpected string "b" at column 15', '"b"'),
        ("[1, 2]", "a list can only follow 'in' or 'not in'", "[1, 2]"),
        ("stage in 'a'", "expected a list like", "'a'"),
        ("nps is 3", "expected 'null' or 'not null' after 'is'", "is 3"),
        ("orders = 2", "use '==' to compare", "="),
        ("orders > 1 AND nps > 2", "keywords are lowercase: use 'and'", "AND"),
        (
            "orders > 1 nps > 2",
            "unexpected 'nps' at column 12; did you forget 'and' or 'or'?",
            "nps",
        ),
        ('count(days=1, "a")', "positional argument after keyword argument", '"a"'),
        ("traits. == 1", "expected a name after '.'", "."),
        ("orders > 1 and\n  nps >", "expected an expression after '>' at line 2, column 7", ">"),
        ("orders > 1 and\n  @", "unknown character '@' at line 2, column 3", "@"),
    ],
)
def test_syntax_errors_name_the_problem_and_point_at_it(source, message, text):
    with pytest.raises(RuleError) as caught:
        parse(source)
    assert message in caught.value.message
    assert flagged(caught.value) == text
    assert caught.value.source == source


@pytest.mark.parametrize("source", ["", "   ", "# only a comment\n"])
def test_an_empty_rule_is_an_error(source):
    with pytest.raises(RuleError, match="the rule is empty"):
        parse(source)


def test_syntax_error_positions_are_zero_based_offsets_and_columns_one_based():
    with pytest.raises(RuleError) as caught:
        parse("orders >= 2 and (x))")
    error = caught.value
    assert (error.position, error.length) == (19, 1)
    assert error.message == "unexpected ')' at column 20"
    assert error.pointer() == "orders >= 2 and (x))\n" + " " * 19 + "^"


def test_an_unterminated_string_covers_the_rest_of_the_rule():
    with pytest.raises(RuleError) as caught:
        parse("stage == 'retention")
    assert (caught.value.position, caught.value.length) == (9, 10)


# --------------------------------------------------------------------------- check errors


def test_unknown_field_points_at_it_and_suggests_the_closest():
    error = error_of("orders > 1 and ordrs > 2")
    assert error.message == "unknown field 'ordrs'; did you mean 'orders'?"
    assert (error.position, error.length, error.suggestion) == (15, 5, "orders")


def test_unknown_field_without_a_close_match_lists_what_is_known():
    error = error_of("zzz > 1")
    assert error.message.startswith("unknown field 'zzz' in this segment rule; known: ")
    assert "orders" in error.message
    assert "traits.<name>" in error.message
    assert "count(event, days=…)" in error.message
    assert error.suggestion is None


def test_misspelled_namespace_suggests_the_same_name_in_the_right_one():
    error = error_of('trait.plan == "pro"')
    assert error.suggestion == "traits.plan"
    assert flagged(error) == "trait.plan"


def test_any_name_inside_an_open_namespace_is_allowed():
    assert check(parse("traits.anything_at_all > 3"), "traits.anything_at_all > 3", SEGMENT)


def test_a_bare_namespace_needs_a_name_after_it():
    assert "'traits' needs a name after it" in error_of("traits == 1").message


def test_capitalised_keyword_as_field_suggests_the_lowercase_keyword():
    error = error_of("True")
    assert error.suggestion == "true"
    assert "keywords are lowercase" in error.message


def test_a_function_used_as_a_field_says_how_to_call_it():
    error = error_of("in_segment")
    assert error.message == "'in_segment' is a function; call it like in_segment(segment)"


def test_a_field_called_like_a_function_says_to_drop_the_parentheses():
    error = error_of("orders() > 1")
    assert "'orders' is a field, not a function" in error.message
    assert flagged(error) == "orders"


def test_unknown_function_points_at_its_name_and_suggests_the_closest():
    error = error_of('cnt("Order Completed") > 1')
    assert error.message == "unknown function 'cnt'; did you mean 'count'?"
    assert (error.position, error.length, error.suggestion) == (0, 3, "count")


def test_unknown_function_without_a_close_match_lists_the_available_ones():
    error = error_of("zap() > 1")
    assert "available: count(event, days=…), in_segment(segment)" in error.message


def test_unknown_keyword_argument_points_at_it_and_suggests_the_closest():
    source = 'count("Order Completed", day=30) > 1'
    error = error_of(source)
    assert error.message.startswith("count() has no argument 'day'; did you mean 'days'?")
    assert "usage: count(event, days=…)" in error.message
    assert (error.position, error.length, error.suggestion) == (source.index("day"), 3, "days")


def test_too_many_arguments_points_at_the_first_extra_one():
    error = error_of('count("a", 1, 2) > 0')
    assert error.message.startswith("count() takes at most 2 arguments, got 3")
    assert flagged(error) == "2"


def test_a_missing_required_argument_is_named():
    error = error_of("count(days=3) > 1")
    assert error.message.startswith("count() needs 'event' (a string)")
    assert flagged(error) == "count(days=3)"


def test_an_argument_given_twice_is_an_error():
    error = error_of('count("a", event="b") > 1')
    assert error.message.startswith("count() got 'event' twice")
    assert flagged(error) == "event"


def test_a_wrong_argument_type_names_the_parameter():
    error = error_of("count(30) > 1")
    assert error.message.startswith("count() expects a string for 'event'; 30 is a number")
    assert flagged(error) == "30"


def test_function_arguments_must_be_literals():
    error = error_of('count("a", days=orders) > 1')
    assert error.message.startswith("arguments of count() must be literals")
    assert flagged(error) == "orders"


def test_a_negative_number_is_a_literal_argument():
    assert check(parse('count("a", days=-1) > 0'), 'count("a", days=-1) > 0', SEGMENT)


def test_comparing_a_number_with_a_string_is_an_error():
    error = error_of('orders == "2"')
    assert error.message == 'cannot compare orders (a number) with "2" (a string)'
    assert flagged(error) == 'orders == "2"'


def test_comparing_with_null_suggests_is_null():
    assert error_of("nps == null").message == "'== null' is never true; write 'nps is null'"
    assert "write 'nps is not null'" in error_of("nps != null").message


def test_ordering_true_false_values_is_an_error():
    assert "'<' needs numbers, strings or timestamps" in error_of("signed_up < true").message


def test_a_timestamp_compares_with_a_date_string():
    source = 'first_seen >= "2024-01-01"'
    assert check(parse(source), source, SEGMENT) == "bool"


@pytest.mark.parametrize(
    ("source", "message", "text"),
    [
        (
            "orders and nps > 1",
            "'and' needs true or false on both sides; 'orders' is a number",
            "orders",
        ),
        (
            "nps > 1 or stage",
            "'or' needs true or false on both sides; 'stage' is a string",
            "stage",
        ),
        ("not orders", "'not' needs true or false; 'orders' is a number", "orders"),
        ("stage + 1 > 2", "'+' needs numbers on both sides; 'stage' is a string", "stage"),
        ("-stage == 1", "'-' needs a number; 'stage' is a string", "stage"),
        ("orders + null > 1", "'+' needs numbers on both sides; 'null' is null", "null"),
    ],
)
def test_operators_need_operands_of_the_right_type(source, message, text):
    error = error_of(source)
    assert error.message == message
    assert flagged(error) == text


def test_a_rule_must_be_true_or_false():
    error = error_of("orders + 1")
    assert error.message == "a segment rule must be true or false; 'orders + 1' is a number"
    assert (error.position, error.length) == (0, 10)


def test_untyped_values_are_compatible_with_everything():
    source = 'traits.age > 3 and traits.plan == "pro" and traits.vip and traits.a + 1 > 2'
    assert check(parse(source), source, SEGMENT) == "bool"
    assert check(parse("traits.vip"), "traits.vip", SEGMENT) == "any"


@pytest.mark.parametrize(
    ("source", "message", "text"),
    [
        ('stage in [1, "a"]', 'all values in the list must be of one type; "a" is a string', '"a"'),
        ("stage in []", "the list is empty", "[]"),
        ("stage in [orders]", "list values must be literals", "orders"),
        ("stage in [null]", "null cannot be in a list; use 'is null'", "null"),
        ("orders in ['a']", "cannot compare orders (a number) with a list of strings", None),
    ],
)
def test_in_lists_hold_literals_of_one_matching_type(source, message, text):
    error = error_of(source)
    assert message in error.message
    assert flagged(error) == (text or source)


def test_in_accepts_negative_numbers():
    assert check(parse("orders in [-1, 2]"), "orders in [-1, 2]", SEGMENT) == "bool"


# --------------------------------------------------------------------------- compile + DuckDB


@pytest.fixture(scope="module")
def con():
    return ibis.duckdb.connect()


CUSTOMERS = ibis.memtable(
    {
        "id": ["ann", "bob", "cat", "dan"],
        "orders": [3, 1, 0, None],
        "days_since_last_order": [10, 200, None, None],
        "revenue": [300.0, 20.0, 0.0, None],
        "nps": [10, None, 5, None],
        "stage": ["retention", "onboarding", "loyalty", None],
        "signed_up": [True, False, True, None],
        "trait_plan": ["pro", "free", None, "pro"],
        "trait_age": ["42", "abc", "19", None],
        "trait_vip": ["true", "false", None, "maybe"],
        "count_product_viewed_30": [5, 2, 0, 9],
        "segment_vip": [True, False, False, None],
    }
)


def resolve_field(name: str) -> ibis.Value:
    return CUSTOMERS[name.replace("traits.", "trait_")]


def resolve_call(call: Call) -> ibis.Value:
    args = call_arguments(call, SEGMENT.functions[call.name])
    if call.name == "in_segment":
        return CUSTOMERS[f"segment_{args['segment']}"]
    column = f"count_{str(args['event']).lower().replace(' ', '_')}_{args.get('days', 30)}"
    return CUSTOMERS[column]


def matching(con, source: str) -> list[str]:
    node = parse(source)
    check(node, source, SEGMENT)
    condition = compile_condition(node, resolve_field, resolve_call)
    return sorted(con.execute(CUSTOMERS.filter(condition).select("id"))["id"])


def values(con, source: str) -> list[object]:
    expression = compile_rule(parse(source), resolve_field, resolve_call)
    frame = con.execute(CUSTOMERS.order_by("id").select(value=expression))
    return [None if v is None or v != v else v for v in frame["value"]]


@pytest.mark.parametrize(
    ("source", "ids"),
    [
        ("orders >= 2 and days_since_last_order <= 90", ["ann"]),
        ('count("Product Viewed", days=30) > 3', ["ann", "dan"]),
        ('count("Product Viewed") > 3', ["ann", "dan"]),
        ('traits.plan == "pro"', ["ann", "dan"]),
        ('in_segment("vip")', ["ann"]),
        ("not signed_up or (revenue / orders) > 50.5", ["ann", "bob"]),
        ('stage in ["retention", "loyalty"]', ["ann", "cat"]),
        ('stage not in ["retention", "loyalty"]', ["bob"]),
        ("nps is not null and nps >= 9", ["ann"]),
        ("nps is null", ["bob", "dan"]),
        ("true", ["ann", "bob", "cat", "dan"]),
        ("false", []),
        ("orders * 1000000000000 > 100 + 100", ["ann", "bob"]),
    ],
)
def test_compiled_rules_select_the_right_customers(con, source, ids):
    assert matching(con, source) == ids


def test_a_comparison_with_a_missing_value_is_false_either_way(con):
    assert matching(con, "nps >= 9") == ["ann"]
    assert matching(con, "not (nps >= 9)") == ["cat"]


def test_sql_three_valued_logic_lets_or_succeed_past_an_unknown(con):
    assert matching(con, "nps >= 9 or orders >= 0") == ["ann", "bob", "cat"]


def test_division_by_zero_is_null_and_so_the_condition_is_false(con):
    assert values(con, "revenue / orders") == [100.0, 20.0, None, None]
    assert matching(con, "revenue / orders >= 0") == ["ann", "bob"]
    assert values(con, "1 / 0") == [None] * 4


def test_division_is_float_division(con):
    assert values(con, "orders / 2") == [1.5, 0.5, 0.0, None]


def test_untyped_text_compared_with_a_number_is_cast_and_junk_is_just_false(con):
    assert matching(con, "traits.age > 40") == ["ann"]
    assert matching(con, "traits.age in [19, 42]") == ["ann", "cat"]
    assert matching(con, "traits.age + 1 == 20") == ["cat"]


def test_untyped_text_used_as_a_condition_is_read_as_a_boolean(con):
    assert matching(con, "traits.vip") == ["ann"]
    assert matching(con, "not traits.vip") == ["bob"]


def test_a_timestamp_compares_with_a_date_string_in_the_database(con):
    table = ibis.memtable({"first_seen": ["2024-01-01", "2025-06-01"]}).mutate(
        first_seen=ibis._.first_seen.cast("timestamp")
    )
    source = 'first_seen >= "2025-01-01"'
    condition = compile_condition(parse(source), lambda name: table[name], resolve_call)
    assert con.execute(table.select(hit=condition))["hit"].tolist() == [False, True]


def test_a_trait_filter_runs_over_events(con):
    events = ibis.memtable(
        {
            "event": ["Order Completed"] * 4,
            "category": ["Coffee", "Coffee", "Tea", None],
            "price": ["12.5", "8", "20", "30"],
        }
    )
    source = 'properties.category == "Coffee" and properties.price > 10'
    node = parse(source)
    check(node, source, EVENTS)
    condition = compile_condition(
        node, lambda name: events[name.removeprefix("properties.")], resolve_call
    )
    assert con.execute(events.select(hit=condition))["hit"].tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_compile_rule_keeps_nulls_for_callers_that_want_them(con):
    assert values(con, "nps >= 9") == [True, None, False, None]


# --------------------------------------------------------------------------- helpers


def terms(source: str) -> list[str]:
    return [source_of(term, source) for term in explain_terms(parse(source))]


def test_explain_terms_are_the_leaf_conditions_in_source_order():
    source = 'orders >= 2 and (not signed_up or nps is null) and stage in ["a"]'
    assert terms(source) == ["orders >= 2", "signed_up", "nps is null", 'stage in ["a"]']


def test_explain_terms_keep_calls_literals_and_arithmetic_comparisons_whole():
    source = 'in_segment("vip") or true or (revenue / orders) > 50.5'
    assert terms(source) == ['in_segment("vip")', "true", "(revenue / orders) > 50.5"]


def test_a_single_condition_is_its_own_term():
    assert terms("orders > 1") == ["orders > 1"]


def test_references_lists_fields_and_calls_in_order():
    source = 'in_segment("vip") and count("A", days=7) > orders and traits.plan == "x"'
    names, calls = references(parse(source))
    assert names == {"orders", "traits.plan"}
    assert [source_of(call, source) for call in calls] == [
        'in_segment("vip")',
        'count("A", days=7)',
    ]


def test_literal_value_reads_call_arguments():
    call = parse('count("Product Viewed", days=-30)')
    assert literal_value(call.args[0]) == "Product Viewed"
    assert literal_value(call.kwargs[0][1]) == -30
    with pytest.raises(ValueError):
        literal_value(parse("orders"))


def test_call_arguments_binds_positional_and_keyword_arguments_by_name():
    assert call_arguments(parse('count("A", 7)'), COUNT) == {"event": "A", "days": 7}
    assert call_arguments(parse('count(days=7, event="A")'), COUNT) == {"event": "A", "days": 7}
    assert call_arguments(parse('count("A")'), COUNT) == {"event": "A"}


# --------------------------------------------------------------------------- property

FIELDS = ["orders", "nps", "revenue", "traits.plan", "properties.price"]
SPACE = st.sampled_from([" ", "  ", "\n", " # note\n"])
NUMBERS = st.one_of(
    st.integers(0, 10**6).map(str),
    st.floats(0, 1e6, allow_nan=False).map(lambda f: f"{f:.3f}"),
)
STRINGS = st.text(st.sampled_from("ab \"'\\\n#"), max_size=6).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
)
CALLS = st.builds(lambda s, n: f"count({s}, days={n})", STRINGS, NUMBERS)


def joined(*parts):
    return st.tuples(*parts, SPACE).map(lambda t: t[-1].join(t[:-1]))


def arithmetic(logic):
    atom = st.one_of(
        st.sampled_from(FIELDS),
        NUMBERS,
        STRINGS,
        CALLS,
        logic.map(lambda s: f"({s})"),
    )
    return st.recursive(
        atom,
        lambda inner: st.one_of(
            joined(inner, st.sampled_from(["+", "-", "*", "/"]), inner),
            inner.map(lambda s: f"-{s}"),
        ),
        max_leaves=4,
    )


def comparison(logic):
    side = arithmetic(logic)
    items = st.lists(st.one_of(NUMBERS, STRINGS), min_size=1, max_size=3).map(
        lambda xs: "[" + ", ".join(xs) + "]"
    )
    return st.one_of(
        side,
        joined(side, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), side),
        joined(side, st.sampled_from(["in", "not in"]), items),
        joined(side, st.sampled_from(["is null", "is not null"])),
    )


RULES = st.deferred(
    lambda: st.recursive(
        comparison(st.just("true")),
        lambda inner: st.one_of(
            joined(inner, st.sampled_from(["and", "or"]), inner),
            inner.map(lambda s: f"not {s}"),
            comparison(inner),
        ),
        max_leaves=6,
    )
)


@settings(max_examples=200, deadline=None)
@given(RULES)
def test_generated_rules_parse_and_every_span_round_trips(source):
    root = parse(source)
    for node in walk(root):
        assert 0 <= node.start < node.end <= len(source)
        if not isinstance(node, ListLiteral):
            assert shape(parse(source_of(node, source))) == shape(node)


STAGED = Scope(
    fields={"stage": "string", "rfm_segment": "string", "orders": "number"},
    values={"stage": ("awareness", "churned"), "rfm_segment": ("champions", "loyal")},
)


@pytest.mark.parametrize(
    ("source", "message", "text"),
    [
        (
            'stage == "churnd"',
            "'churnd' is not a value of stage; did you mean 'churned'?",
            '"churnd"',
        ),
        ('"churnd" != stage', "'churnd' is not a value of stage", '"churnd"'),
        (
            'rfm_segment in ["champions", "loyl"]',
            "did you mean 'loyal'? it is one of champions, loyal",
            '"loyl"',
        ),
        (
            'stage == "vip"',
            "'vip' is not a value of stage; it is one of awareness, churned",
            '"vip"',
        ),
    ],
)
def test_a_value_a_field_never_takes_is_an_error_at_the_value(source, message, text):
    error = error_of(source, STAGED)
    assert message in error.message
    assert flagged(error) == text


def test_known_values_and_fields_without_a_list_pass():
    for source in (
        'stage == "churned" and rfm_segment in ["loyal"]',
        'stage != "awareness"',
        "orders == 3",
    ):
        assert check(parse(source), source, STAGED) == "bool"
