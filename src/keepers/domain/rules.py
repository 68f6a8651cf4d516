"""The Keepers rule language: a small, safe expression language for stages, segments and
trait filters, parsed by hand (never `eval`) so a rule can only name known fields and
functions and every mistake is reported at its exact position in the text.

    orders >= 2 and days_since_last_order <= 90
    count("Product Viewed", days=30) > 3
    stage in ["retention", "loyalty"]
    nps is not null and nps >= 9

Precedence, low → high: `or`; `and`; `not`; comparison (`== != < <= > >=`, `in [..]`,
`not in [..]`, `is null`, `is not null`; never chained); `+ -`; `* /`; unary `-`; primary.
`#` starts a comment that runs to the end of the line.

`parse` gives frozen AST nodes carrying `start`/`end` offsets; `check` types the tree
against a `Scope` (the fields and functions a kind of rule may use). Compiling to queries
lives in `keepers.engine.compile`, so this module stays pure.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import NoReturn, TypeAlias

from keepers.errors import RuleError

KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null", "true", "false"})
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
ARITHMETIC = ("+", "-", "*", "/")
LOGIC = ("and", "or")
TYPES = ("bool", "number", "string", "timestamp", "null", "any")

LiteralValue: TypeAlias = bool | int | float | str | None


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Literal:
    """A number, string, `true`, `false` or `null`."""

    value: LiteralValue
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class ListLiteral:
    """`[a, b, ...]`; only ever the right side of `in` / `not in`."""

    items: tuple[Node, ...]
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class Field:
    """A column or trait, by its full dotted name (`orders`, `traits.plan`)."""

    name: str
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class Call:
    """`name(arg, ..., key=value, ...)`. `keyword_starts` holds where each keyword's name
    begins, so an error about an unknown keyword can point at the keyword itself."""

    name: str
    args: tuple[Node, ...] = ()
    kwargs: tuple[tuple[str, Node], ...] = ()
    start: int = 0
    end: int = 0
    keyword_starts: tuple[int, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Unary:
    """`not x` or `-x`."""

    op: str
    operand: Node
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class Binary:
    """Arithmetic (`+ - * /`), logic (`and or`) or a comparison (`== != < <= > >=`)."""

    op: str
    left: Node
    right: Node
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class In:
    """`x in [..]` or, negated, `x not in [..]`."""

    operand: Node
    items: ListLiteral
    negated: bool = False
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class IsNull:
    """`x is null` or, negated, `x is not null`."""

    operand: Node
    negated: bool = False
    start: int = 0
    end: int = 0


Node: TypeAlias = Literal | ListLiteral | Field | Call | Unary | Binary | In | IsNull


def source_of(node: Node, source: str) -> str:
    """The exact text a node was parsed from, so messages quote what the user wrote."""
    return source[node.start : node.end]


def children(node: Node) -> tuple[Node, ...]:
    """Direct sub-nodes in source order, so walkers need not know every node type."""
    if isinstance(node, ListLiteral):
        return node.items
    if isinstance(node, Call):
        return node.args + tuple(value for _, value in node.kwargs)
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, In):
        return (node.operand, node.items)
    if isinstance(node, IsNull):
        return (node.operand,)
    return ()


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, parents before children, in source order."""
    yield node
    for child in children(node):
        yield from walk(child)


def shape(node: Node) -> tuple:
    """The tree without source offsets, to compare rules by meaning rather than spacing."""
    parts: list[object] = [type(node).__name__]
    for f in fields(node):
        if f.name in ("start", "end", "keyword_starts"):
            continue
        parts.append(_shape_value(getattr(node, f.name)))
    return tuple(parts)


def _shape_value(value: object) -> object:
    if isinstance(value, tuple):
        return tuple(_shape_value(v) for v in value)
    if isinstance(value, Literal | ListLiteral | Field | Call | Unary | Binary | In | IsNull):
        return shape(value)
    return value


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    """One lexeme: kind is number, string, name, keyword, op or eof."""

    kind: str
    text: str
    value: LiteralValue
    start: int
    end: int


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_OPERATORS = ("==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "(", ")", "[", "]", ",", "=")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n"}
_CHARACTER_HINTS = {
    "&": "; use 'and'",
    "|": "; use 'or'",
    "!": "; use 'not' (or '!=' for not equal)",
    "“": '; use straight quotes "..."',
    "”": '; use straight quotes "..."',
    "‘": "; use straight quotes '...'",
    "’": "; use straight quotes '...'",
}


def where(source: str, position: int) -> str:
    """'column N' (1-based), with the line too when the rule spans several lines."""
    line = source.count("\n", 0, position) + 1
    column = position - (source.rfind("\n", 0, position) + 1) + 1
    return f"column {column}" if line == 1 else f"line {line}, column {column}"


def _fail(
    message: str, source: str, start: int, end: int, suggestion: str | None = None
) -> NoReturn:
    raise RuleError(
        message, source=source, position=start, length=end - start, suggestion=suggestion
    )


def tokenize(source: str) -> list[Token]:
    """Split a rule into tokens, ending with an `eof` token; comments and spaces vanish."""
    tokens: list[Token] = []
    i = 0
    while i < len(source):
        char = source[i]
        if char.isspace():
            i += 1
        elif char == "#":
            newline = source.find("\n", i)
            i = len(source) if newline < 0 else newline
        else:
            token = _next_token(source, i)
            tokens.append(token)
            i = token.end
    tokens.append(Token("eof", "", None, len(source), len(source)))
    return tokens


def _next_token(source: str, i: int) -> Token:
    char = source[i]
    if char in "\"'":
        return _string(source, i)
    if match := _NUMBER.match(source, i):
        text = match.group()
        value = float(text) if "." in text else int(text)
        return Token("number", text, value, i, match.end())
    if match := _NAME.match(source, i):
        return _name(source, match)
    for op in _OPERATORS:
        if source.startswith(op, i):
            return Token("op", op, None, i, i + len(op))
    hint = _CHARACTER_HINTS.get(char, "")
    _fail(f"unknown character '{char}' at {where(source, i)}{hint}", source, i, i + 1)


def _name(source: str, match: re.Match[str]) -> Token:
    text, end = match.group(), match.end()
    if source.startswith(".", end):
        _fail(
            f"expected a name after '.' at {where(source, end)}, like traits.plan",
            source,
            end,
            end + 1,
        )
    kind = "keyword" if text in KEYWORDS else "name"
    return Token(kind, text, None, match.start(), end)


def _string(source: str, start: int) -> Token:
    quote, chars, i = source[start], [], start + 1
    while i < len(source) and source[i] != quote:
        if source[i] == "\\":
            escaped = source[i + 1 : i + 2]
            if escaped not in _ESCAPES:
                _fail(
                    f"unknown escape '\\{escaped}' in the string at {where(source, i)}; "
                    "use \\\" \\' \\\\ or \\n",
                    source,
                    i,
                    i + 2,
                )
            chars.append(_ESCAPES[escaped])
            i += 2
        else:
            chars.append(source[i])
            i += 1
    if i >= len(source):
        _fail(
            f"unterminated string starting at {where(source, start)}; close it with {quote}",
            source,
            start,
            len(source),
        )
    return Token("string", source[start : i + 1], "".join(chars), start, i + 1)


# --------------------------------------------------------------------------- parser


def parse(source: str) -> Node:
    """Parse one rule; raises `RuleError` pointing at the first mistake."""
    return _Parser(source).rule()


def _describe(token: Token) -> str:
    if token.kind == "eof":
        return "end of rule"
    if token.kind == "string":
        return f"string {token.text}"
    return f"'{token.text}'"


class _Parser:
    """Recursive descent, one method per precedence level."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0

    # ---- token helpers

    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def at(self, *texts: str) -> bool:
        return self.token.kind in ("op", "keyword") and self.token.text in texts

    def advance(self) -> Token:
        token = self.token
        self.i += 1
        return token

    def fail(self, message: str, start: int, end: int) -> NoReturn:
        _fail(message, self.source, start, end)

    def unexpected(self, hint: str = "") -> NoReturn:
        token = self.token
        self.fail(
            f"unexpected {_describe(token)} at {where(self.source, token.start)}{hint}",
            token.start,
            max(token.end, token.start + 1),
        )

    def close(self, opener: Token, closer: str, expected: str) -> Token:
        """Consume `closer`, or explain what is missing and where it was opened."""
        if self.at(closer):
            return self.advance()
        if self.token.kind == "eof":
            self.fail(
                f"missing '{closer}' to close '{opener.text}' at "
                f"{where(self.source, opener.start)}",
                opener.start,
                opener.end,
            )
        self.unexpected(f"; expected {expected}")

    # ---- grammar

    def rule(self) -> Node:
        if self.token.kind == "eof":
            self.fail(
                "the rule is empty; write a condition such as orders >= 2",
                0,
                len(self.source),
            )
        node = self.or_expr()
        if self.token.kind != "eof":
            self.unexpected(self.trailing_hint())
        return node

    def trailing_hint(self) -> str:
        """Why a complete expression is followed by more text, when we can guess."""
        token = self.token
        if token.kind == "name" and token.text.lower() in KEYWORDS:
            return f"; keywords are lowercase: use '{token.text.lower()}'"
        if self.at("="):
            return "; use '==' to compare"
        if token.kind in ("name", "number", "string") or self.at("(", "not"):
            return "; did you forget 'and' or 'or'?"
        return ""

    def or_expr(self) -> Node:
        return self.logic("or", self.and_expr)

    def and_expr(self) -> Node:
        return self.logic("and", self.not_expr)

    def logic(self, op: str, operand) -> Node:
        node = operand()
        while self.at(op):
            self.advance()
            right = operand()
            node = Binary(op, node, right, node.start, right.end)
        return node

    def not_expr(self) -> Node:
        if self.at("not"):
            token = self.advance()
            operand = self.not_expr()
            return Unary("not", operand, token.start, operand.end)
        return self.comparison()

    def at_comparison(self) -> bool:
        if self.at(*COMPARISONS, "in", "is"):
            return True
        return self.at("not") and self.peek().kind == "keyword" and self.peek().text == "in"

    def comparison(self) -> Node:
        node = self.additive()
        if not self.at_comparison():
            return node
        node = self.comparison_tail(node)
        if self.at_comparison():
            chained = self.comparison_tail(node)
            text = self.source[node.start : chained.end]
            self.fail(
                f"'{text}': comparisons cannot be chained; use 'and'",
                node.start,
                chained.end,
            )
        return node

    def comparison_tail(self, left: Node) -> Node:
        op = self.advance()
        if op.text == "is":
            return self.is_null(left, op)
        if op.text in ("in", "not"):
            if op.text == "not":
                self.advance()
            items = self.list_after(op)
            return In(left, items, op.text == "not", left.start, items.end)
        right = self.additive()
        return Binary(op.text, left, right, left.start, right.end)

    def is_null(self, left: Node, op: Token) -> Node:
        negated = self.at("not")
        if negated:
            self.advance()
        if not self.at("null"):
            self.fail(
                f"expected 'null' or 'not null' after 'is' at {where(self.source, op.start)}",
                op.start,
                max(self.token.end, op.end),
            )
        end = self.advance().end
        return IsNull(left, negated, left.start, end)

    def list_after(self, op: Token) -> ListLiteral:
        if not self.at("["):
            word = "not in" if op.text == "not" else "in"
            self.fail(
                f'expected a list like ["a", "b"] after \'{word}\' at '
                f"{where(self.source, self.token.start)}",
                self.token.start,
                max(self.token.end, self.token.start + 1),
            )
        return self.list_literal()

    def list_literal(self) -> ListLiteral:
        opener = self.advance()
        items: list[Node] = []
        while not self.at("]"):
            if items:
                self.close_or_comma(opener, "]")
            items.append(self.or_expr())
        end = self.advance().end
        return ListLiteral(tuple(items), opener.start, end)

    def close_or_comma(self, opener: Token, closer: str) -> None:
        if self.at(","):
            self.advance()
        else:
            self.close(opener, closer, f"',' or '{closer}'")

    def additive(self) -> Node:
        return self.arithmetic(("+", "-"), self.term)

    def term(self) -> Node:
        return self.arithmetic(("*", "/"), self.unary)

    def arithmetic(self, ops: tuple[str, ...], operand) -> Node:
        node = operand()
        while self.at(*ops):
            op = self.advance()
            right = operand()
            node = Binary(op.text, node, right, node.start, right.end)
        return node

    def unary(self) -> Node:
        if self.at("-"):
            token = self.advance()
            operand = self.unary()
            return Unary("-", operand, token.start, operand.end)
        return self.primary()

    def primary(self) -> Node:
        token = self.token
        if token.kind in ("number", "string"):
            self.advance()
            return Literal(token.value, token.start, token.end)
        if token.kind == "keyword" and token.text in ("true", "false", "null"):
            self.advance()
            value = {"true": True, "false": False, "null": None}[token.text]
            return Literal(value, token.start, token.end)
        if token.kind == "name":
            return self.name()
        if self.at("("):
            return self.parenthesised()
        if self.at("["):
            items = self.list_literal()
            self.fail(
                f"a list can only follow 'in' or 'not in' (at {where(self.source, items.start)})",
                items.start,
                items.end,
            )
        self.expression_expected()

    def expression_expected(self) -> NoReturn:
        previous = self.tokens[self.i - 1] if self.i else None
        if self.token.kind == "eof" and previous is not None:
            self.fail(
                f"expected an expression after '{previous.text}' at "
                f"{where(self.source, previous.start)}",
                previous.start,
                previous.end,
            )
        self.unexpected(f"; expected an expression after '{previous.text}'" if previous else "")

    def parenthesised(self) -> Node:
        opener = self.advance()
        inner = self.or_expr()
        closer = self.close(opener, ")", "')'")
        return replace(inner, start=opener.start, end=closer.end)

    def name(self) -> Node:
        token = self.advance()
        if not self.at("("):
            return Field(token.text, token.start, token.end)
        return self.call(token)

    def call(self, name: Token) -> Call:
        opener = self.advance()
        args: list[Node] = []
        kwargs: list[tuple[str, Node]] = []
        starts: list[int] = []
        while not self.at(")"):
            if args or kwargs:
                self.close_or_comma(opener, ")")
            if self.token.kind == "name" and self.peek().text == "=":
                keyword = self.advance()
                self.advance()
                kwargs.append((keyword.text, self.or_expr()))
                starts.append(keyword.start)
                continue
            argument = self.or_expr()
            if kwargs:
                self.fail(
                    f"positional argument after keyword argument in {name.text}() at "
                    f"{where(self.source, argument.start)}",
                    argument.start,
                    argument.end,
                )
            args.append(argument)
        end = self.advance().end
        return Call(name.text, tuple(args), tuple(kwargs), name.start, end, tuple(starts))


# --------------------------------------------------------------------------- checker


@dataclass(frozen=True)
class FunctionSpec:
    """A function a rule may call; the engine decides how to compute it."""

    name: str
    params: tuple[tuple[str, str], ...]
    optional: tuple[tuple[str, str], ...] = ()
    returns: str = "number"
    help: str = ""

    def signature(self) -> str:
        """`count(event, days=…)`, to show how to call it in messages."""
        names = [name for name, _ in self.params] + [f"{name}=…" for name, _ in self.optional]
        return f"{self.name}({', '.join(names)})"


@dataclass(frozen=True)
class Scope:
    """What one kind of rule may refer to: exact fields, open namespaces and functions."""

    fields: Mapping[str, str]
    prefixes: Mapping[str, str] = field(default_factory=dict)
    functions: Mapping[str, FunctionSpec] = field(default_factory=dict)
    what: str = "rule"
    # fields that only take these values (stage keys, RFM segment names): a literal
    # compared with one must be one of them, so a typo is an error rather than no match
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def field_type(self, name: str) -> str | None:
        """The type of a known field, or of a name inside an open namespace."""
        if name in self.fields:
            return self.fields[name]
        matches = [p for p in self.prefixes if name.startswith(p + ".")]
        return self.prefixes[max(matches, key=len)] if matches else None


_TYPE_WORDS = {
    "bool": "true or false",
    "number": "a number",
    "string": "a string",
    "timestamp": "a timestamp",
    "null": "null",
    "any": "any value",
}
_ORDERED = ("number", "string", "timestamp", "any")


def check(node: Node, source: str, scope: Scope) -> str:
    """Type a parsed rule against a scope and insist it is a condition; returns its type
    ("bool", or "any" when it rests on an untyped field). Raises `RuleError`."""
    kind = _Checker(source, scope).type_of(node)
    if kind not in ("bool", "any"):
        _fail(
            f"a {scope.what} must be true or false; '{source_of(node, source)}' is "
            f"{_TYPE_WORDS[kind]}",
            source,
            node.start,
            node.end,
        )
    return kind


def check_number(node: Node, source: str, scope: Scope) -> str:
    """Type a parsed expression and insist it is a number (or an untyped field, which is
    cast); returns its type. Raises `RuleError`."""
    kind = _Checker(source, scope).type_of(node)
    if kind not in ("number", "any"):
        _fail(
            f"a {scope.what} must be a number; '{source_of(node, source)}' is {_TYPE_WORDS[kind]}",
            source,
            node.start,
            node.end,
        )
    return kind


def _literal_type(value: LiteralValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return "string" if isinstance(value, str) else "number"


def plain_literal(node: Node) -> Literal | None:
    """The literal a node stands for (folding `-3` into -3), or None when it is not one."""
    if isinstance(node, Literal):
        return node
    if isinstance(node, Unary) and node.op == "-" and isinstance(node.operand, Literal):
        value = node.operand.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Literal(-value, node.start, node.end)
    return None


class _Checker:
    """Walks the tree bottom-up, returning each node's type or raising at its span."""

    def __init__(self, source: str, scope: Scope) -> None:
        self.source = source
        self.scope = scope

    def text(self, node: Node) -> str:
        return source_of(node, self.source)

    def fail(self, message: str, node: Node, suggestion: str | None = None) -> NoReturn:
        _fail(message, self.source, node.start, node.end, suggestion)

    def type_of(self, node: Node) -> str:
        method = getattr(self, f"check_{type(node).__name__.lower()}")
        return method(node)

    def check_literal(self, node: Literal) -> str:
        return _literal_type(node.value)

    def check_listliteral(self, node: ListLiteral) -> NoReturn:
        self.fail("a list can only follow 'in' or 'not in'", node)

    def check_field(self, node: Field) -> str:
        kind = self.scope.field_type(node.name)
        if kind is not None:
            return kind
        self.unknown_field(node)

    def unknown_field(self, node: Field) -> NoReturn:
        name = node.name
        if name in self.scope.functions:
            spec = self.scope.functions[name]
            self.fail(f"'{name}' is a function; call it like {spec.signature()}", node)
        if name in self.scope.prefixes:
            self.fail(f"'{name}' needs a name after it, like {name}.plan", node)
        if name.lower() in KEYWORDS:
            self.fail(
                f"unknown field '{name}'; keywords are lowercase: did you mean '{name.lower()}'?",
                node,
                name.lower(),
            )
        suggestion = self.suggest_field(name)
        if suggestion:
            self.fail(f"unknown field '{name}'; did you mean '{suggestion}'?", node, suggestion)
        self.fail(f"unknown field '{name}' in this {self.scope.what}; {self.known()}", node)

    def suggest_field(self, name: str) -> str | None:
        head, dot, rest = name.partition(".")
        if dot:
            close = difflib.get_close_matches(head, list(self.scope.prefixes), n=1, cutoff=0.6)
            if close:
                return f"{close[0]}.{rest}"
        candidates = [*self.scope.fields, *self.scope.prefixes, *self.scope.functions]
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        return close[0] if close else None

    def known(self) -> str:
        names = sorted(self.scope.fields)
        shown = ", ".join(names[:8]) + (f" (and {len(names) - 8} more)" if len(names) > 8 else "")
        extra = [f"{p}.<name>" for p in sorted(self.scope.prefixes)]
        extra += [spec.signature() for _, spec in sorted(self.scope.functions.items())]
        parts = [p for p in (shown, ", ".join(extra)) if p]
        return "known: " + "; ".join(parts) if parts else "nothing is known here"

    def check_call(self, node: Call) -> str:
        spec = self.scope.functions.get(node.name)
        if spec is None:
            self.unknown_function(node)
        _Arguments(self, node, spec).check()
        return spec.returns

    def unknown_function(self, node: Call) -> NoReturn:
        name_span = Field(node.name, node.start, node.start + len(node.name))
        if self.scope.field_type(node.name) is not None:
            self.fail(
                f"'{node.name}' is a field, not a function; write it without parentheses",
                name_span,
            )
        functions = list(self.scope.functions)
        close = difflib.get_close_matches(node.name, functions, n=1, cutoff=0.6)
        if close:
            self.fail(
                f"unknown function '{node.name}'; did you mean '{close[0]}'?", name_span, close[0]
            )
        listed = ", ".join(spec.signature() for _, spec in sorted(self.scope.functions.items()))
        available = f"available: {listed}" if listed else f"a {self.scope.what} has no functions"
        self.fail(f"unknown function '{node.name}'; {available}", name_span)

    def check_unary(self, node: Unary) -> str:
        kind = self.type_of(node.operand)
        if node.op == "not":
            self.expect(kind, "bool", node.operand, "'not' needs true or false")
            return "bool"
        self.expect(kind, "number", node.operand, "'-' needs a number")
        return "number"

    def expect(self, kind: str, wanted: str, node: Node, why: str) -> None:
        if kind not in (wanted, "any"):
            self.fail(f"{why}; '{self.text(node)}' is {_TYPE_WORDS[kind]}", node)

    def check_binary(self, node: Binary) -> str:
        left, right = self.type_of(node.left), self.type_of(node.right)
        if node.op in LOGIC:
            why = f"'{node.op}' needs true or false on both sides"
            self.expect(left, "bool", node.left, why)
            self.expect(right, "bool", node.right, why)
            return "bool"
        if node.op in ARITHMETIC:
            why = f"'{node.op}' needs numbers on both sides"
            self.expect(left, "number", node.left, why)
            self.expect(right, "number", node.right, why)
            return "number"
        self.comparable(node, left, right)
        return "bool"

    def comparable(self, node: Binary, left: str, right: str) -> None:
        for side in (node.left, node.right):
            if isinstance(side, Literal) and side.value is None:
                other = node.right if side is node.left else node.left
                negation = "not " if node.op == "!=" else ""
                self.fail(
                    f"'{node.op} null' is never true; write '{self.text(other)} is {negation}null'",
                    node,
                )
        if not _compatible(left, right):
            self.fail(
                f"cannot compare {self.text(node.left)} ({_TYPE_WORDS[left]}) with "
                f"{self.text(node.right)} ({_TYPE_WORDS[right]})",
                node,
            )
        if node.op in ("==", "!="):
            for one, other in ((node.left, node.right), (node.right, node.left)):
                if isinstance(one, Field) and isinstance(other, Literal):
                    self.known_value(one, other)
        if node.op not in ("==", "!=") and not {left, right} <= set(_ORDERED):
            self.fail(
                f"'{node.op}' needs numbers, strings or timestamps; "
                f"'{self.text(node)}' compares true/false values",
                node,
            )

    def check_in(self, node: In) -> str:
        operand = self.type_of(node.operand)
        items = node.items.items
        if not items:
            self.fail("the list is empty; give at least one value", node.items)
        kinds = [self.in_item(item) for item in items]
        for item, kind in zip(items, kinds, strict=True):
            if kind != kinds[0]:
                self.fail(
                    f"all values in the list must be of one type; {self.text(item)} is "
                    f"{_TYPE_WORDS[kind]} but {self.text(items[0])} is {_TYPE_WORDS[kinds[0]]}",
                    item,
                )
        if not _compatible(operand, kinds[0]):
            self.fail(
                f"cannot compare {self.text(node.operand)} ({_TYPE_WORDS[operand]}) with a "
                f"list of {kinds[0]}s",
                node,
            )
        if isinstance(node.operand, Field):
            for item in items:
                self.known_value(node.operand, item)
        return "bool"

    def known_value(self, name: Field, value: Node) -> None:
        """A string compared with a field of known values must be one of them."""
        allowed = self.scope.values.get(name.name)
        literal = plain_literal(value)
        if not allowed or literal is None or not isinstance(literal.value, str):
            return
        if literal.value in allowed:
            return
        close = difflib.get_close_matches(literal.value, allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        self.fail(
            f"'{literal.value}' is not a value of {name.name}; {hint}"
            f"it is one of {', '.join(allowed)}",
            value,
            f'"{close[0]}"' if close else None,
        )

    def in_item(self, item: Node) -> str:
        literal = plain_literal(item)
        if literal is None:
            self.fail(
                f"list values must be literals like \"pro\" or 3; '{self.text(item)}' is not",
                item,
            )
        if literal.value is None:
            self.fail("null cannot be in a list; use 'is null'", item)
        return _literal_type(literal.value)

    def check_isnull(self, node: IsNull) -> str:
        self.type_of(node.operand)
        return "bool"


def _compatible(left: str, right: str) -> bool:
    if "any" in (left, right) or left == right:
        return True
    return {left, right} == {"timestamp", "string"}


class _Arguments:
    """Checks one call's arguments against its spec: count, names, literal-ness, types."""

    def __init__(self, checker: _Checker, call: Call, spec: FunctionSpec) -> None:
        self.checker = checker
        self.call = call
        self.spec = spec
        self.names = [name for name, _ in spec.params + spec.optional]
        self.types = dict(spec.params + spec.optional)

    def fail(self, message: str, node: Node, suggestion: str | None = None) -> NoReturn:
        usage = f" — {self.spec.help}" if self.spec.help else ""
        self.checker.fail(f"{message} (usage: {self.spec.signature()}{usage})", node, suggestion)

    def check(self) -> None:
        given = self.positional()
        for (name, value), start in zip(self.call.kwargs, self.keyword_starts(), strict=True):
            self.keyword(name, Field(name, start, start + len(name)), given)
            self.value(name, value)
        missing = [name for name, _ in self.spec.params if name not in given]
        if missing:
            self.fail(
                f"{self.spec.name}() needs '{missing[0]}' ({_TYPE_WORDS[self.types[missing[0]]]})",
                self.call,
            )

    def keyword_starts(self) -> tuple[int, ...]:
        starts = self.call.keyword_starts
        if len(starts) == len(self.call.kwargs):
            return starts
        return tuple(value.start for _, value in self.call.kwargs)

    def positional(self) -> set[str]:
        args = self.call.args
        if len(args) > len(self.names):
            self.fail(
                f"{self.spec.name}() takes at most {len(self.names)} argument"
                f"{'s' if len(self.names) != 1 else ''}, got {len(args)}",
                args[len(self.names)],
            )
        for name, value in zip(self.names, args, strict=False):
            self.value(name, value)
        return set(self.names[: len(args)])

    def keyword(self, name: str, span: Field, given: set[str]) -> None:
        if name not in self.names:
            close = difflib.get_close_matches(name, self.names, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            self.fail(
                f"{self.spec.name}() has no argument '{name}'{hint}",
                span,
                close[0] if close else None,
            )
        if name in given:
            self.fail(f"{self.spec.name}() got '{name}' twice", span)
        given.add(name)

    def value(self, name: str, node: Node) -> None:
        literal = plain_literal(node)
        if literal is None:
            self.fail(
                f'arguments of {self.spec.name}() must be literals like "Order Completed" '
                f"or 30; '{self.checker.text(node)}' is not",
                node,
            )
        kind, wanted = _literal_type(literal.value), self.types[name]
        if kind != wanted:
            self.fail(
                f"{self.spec.name}() expects {_TYPE_WORDS[wanted]} for '{name}'; "
                f"{self.checker.text(node)} is {_TYPE_WORDS[kind]}",
                node,
            )
