"""Import a user's existing data files as Segment-spec messages.

Keepers' contract is the Segment HTTP Tracking API, so a file import does not get its own
write path: each reader here turns a file into plain `/v1/batch` items (`identify` for
customers, `track` `Order Completed` / `Order Refunded` for orders, anything for JSONL
events) and the normal ingest path validates, deduplicates and resolves identities.

Re-importing a file must not duplicate anything, and ingest deduplicates by `messageId`, so
every message gets a `messageId` derived from the file's *content* (never from randomness,
the file name or the row position):

- customers: `import-identify-` + sha256 of the message itself. Identical rows collapse;
  an edited row is a new identify, which is what updating traits should be.
- orders: `import-order-` / `import-refund-` + sha256 of the order id *only*. Editing an
  order's amounts and re-importing therefore cannot create a second order; the flip side
  is that the edit is not applied (the first import of an order id wins).
- events: the line's own `messageId`, else `import-` + sha256 of its canonical JSON.

Accepted values are a deliberately small, unambiguous set, because a silent misreading
(1,234 read as 1.234, 03/04 read as April) is worse than a reported row:

- dates: ISO 8601 date or datetime (`2024-03-05`, `2024-03-05T14:30:00+02:00`, `...Z`),
  `YYYYMMDD`, `YYYY/MM/DD[ HH:MM[:SS]]`. Naive values are UTC. `DD/MM/YYYY` and
  `MM/DD/YYYY` are refused: the two cannot be told apart.
- numbers: optional sign and currency symbol (`€ $ £ ¥ ₹`), `.` decimals with `,`
  thousands (`1,234.50`) or the reverse (`1.234,50`), or a lone decimal comma (`12,50`).
  A lone comma followed by exactly three digits (`1,234`) is refused as ambiguous.

Whole-file problems raise `ImportFileError`; row problems become `RowError`s and the row is
skipped while the rest of the file is imported. The readers are generators, so a whole-file
problem surfaces on the first `next()`, before any chunk is yielded (a non-UTF-8 byte deep
in a file is the exception: it is only met when reading reaches it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import chain
from pathlib import Path
from typing import IO, Any

import orjson

from keepers.errors import ImportFileError

__all__ = [
    "CUSTOMER_FIELDS",
    "ORDER_FIELDS",
    "ImportFileError",
    "ParsedChunk",
    "RowError",
    "count_data_lines",
    "parse_mapping",
    "read_customers_csv",
    "read_events_jsonl",
    "read_orders_csv",
]

PathLike = str | os.PathLike[str]

MAX_MESSAGE_ID = 100  # Segment's limit, enforced again by the ingest path

# Our field → header spellings we recognise, compared in snake_case, best first. An alias
# must belong to one field only, or the first field would steal the other's column.
CUSTOMER_FIELDS: dict[str, tuple[str, ...]] = {
    "user_id": (
        "user_id", "userid", "customer_id", "customerid", "customer_number",
        "customer_no", "client_id", "id",
    ),
    "email": ("email", "e_mail", "email_address", "e_mail_address", "mail"),
    "first_name": ("first_name", "firstname", "given_name", "forename"),
    "last_name": ("last_name", "lastname", "surname", "family_name"),
    "name": ("name", "full_name", "fullname", "customer_name"),
    "phone": ("phone", "phone_number", "telephone", "tel", "mobile", "mobile_phone"),
    "created_at": (
        "created_at", "created", "signup_date", "signed_up_at", "joined_at", "date_joined",
        "registered_at", "registration_date", "created_date", "customer_since",
    ),
}  # fmt: skip

ORDER_FIELDS: dict[str, tuple[str, ...]] = {
    "order_id": (
        "order_id", "orderid", "order_number", "order_no", "order_nr", "order",
        "order_ref", "order_reference",
    ),
    "customer_id": (
        "customer_id", "customerid", "user_id", "userid", "customer_number", "customer_no",
        "client_id", "customer",
    ),
    "email": ("email", "e_mail", "email_address", "customer_email", "mail"),
    "ordered_at": (
        "ordered_at", "order_date", "date", "created_at", "orderdate", "order_time",
        "order_datetime", "purchased_at", "purchase_date", "placed_at", "timestamp",
    ),
    "total": ("total", "order_total", "total_amount", "grand_total", "total_price", "amount"),
    "revenue": ("revenue", "net_revenue"),
    "currency": ("currency", "currency_code"),
    "product_id": ("product_id", "productid", "item_id"),
    "sku": ("sku", "product_sku", "item_sku", "variant_sku", "lineitem_sku"),
    "product_name": (
        "product_name", "product", "item_name", "item", "product_title", "lineitem_name",
    ),
    "category": ("category", "product_category", "product_type"),
    "price": ("price", "unit_price", "item_price", "lineitem_price"),
    "quantity": ("quantity", "qty", "lineitem_quantity", "units"),
    "discount": ("discount", "discount_amount", "discounts", "discount_total"),
    "shipping": ("shipping", "shipping_cost", "shipping_amount", "shipping_total"),
    "tax": ("tax", "tax_amount", "taxes", "vat", "tax_total"),
    "status": ("status", "order_status", "financial_status"),
    "refunded_at": ("refunded_at", "refund_date", "returned_at"),
}  # fmt: skip

_ORDER_AMOUNTS = ("total", "revenue", "discount", "shipping", "tax")
_REFUNDED_STATUSES = frozenset({"refunded", "returned", "fully_refunded", "refund", "return"})
_DELIMITERS = (",", ";", "\t")
_BOM = b"\xef\xbb\xbf"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_SLASH_DATE = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?")
_CURRENCY_CODE = re.compile(r"[A-Z]{3}")
_AMOUNT = re.compile(r"([+-]?)\s*[€$£¥₹]?\s*([+-]?)\s*([\d.,]+)\s*[€$£¥₹]?")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_BIG_NUMBER = re.compile(rb"\d{19,}")  # beyond orjson's 64-bit ints: use the stdlib parser


# ---------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class RowError:
    """One skipped row: its 1-based physical line (CSV header = line 1) and why."""

    line: int
    reason: str


@dataclass
class ParsedChunk:
    """Messages from a slice of the file; `lines` is parallel to `messages`."""

    messages: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    lines_read: int = 0


class _RowProblem(ValueError):
    """Internal: a row is skipped; the text becomes `RowError.reason`.

    `line` is set when the failing row is not the one being read (orders are checked
    after grouping), so the error still points at the row that caused it.
    """

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.line = line


# ---------------------------------------------------------------------------------------
# Mapping and counting


def parse_mapping(items: list[str]) -> dict[str, str]:
    """`["order_id=Order Number"]` → `{"order_id": "Order Number"}` (our field → their header).

    Splits on the first `=` so headers may contain one; our field name is lower-cased,
    their header kept as written (it is matched case-insensitively later).
    """
    mapping: dict[str, str] = {}
    for item in items:
        ours, sep, theirs = item.partition("=")
        ours, theirs = ours.strip().lower(), theirs.strip()
        if not sep or not ours or not theirs:
            raise ImportFileError(f"mapping {item!r} must look like our_field=Their Column")
        if ours in mapping:
            raise ImportFileError(f"mapping {item!r}: field '{ours}' is mapped twice")
        mapping[ours] = theirs
    return mapping


def count_data_lines(path: PathLike) -> int:
    """Physical lines after the header: the total for a progress bar.

    Counts newlines in binary blocks without parsing, so it is fast on large files and
    equals the sum of `lines_read` over a reader's chunks. A file whose first non-blank
    character is `{` or `[` is taken as JSONL (no header line).
    """
    with _open_binary(Path(path)) as handle:
        block = handle.read(1 << 16)
        header_lines = _header_line_count(block)
        newlines, last = 0, b""
        while block:
            newlines += block.count(b"\n")
            last = block[-1:]
            block = handle.read(1 << 20)
    total = newlines + (1 if last not in (b"", b"\n") else 0)
    return max(total - header_lines, 0)


def _header_line_count(head: bytes) -> int:
    text = head.removeprefix(_BOM)
    stripped = text.lstrip()
    if not stripped or stripped[:1] in (b"{", b"["):
        return 0
    return text.count(b"\n", 0, len(text) - len(stripped)) + 1


# ---------------------------------------------------------------------------------------
# Reading files


@dataclass(slots=True)
class _Record:
    """A CSV record or JSONL line: first and last physical line, and its content."""

    line: int
    end: int
    payload: Any
    blank: bool


def _open_binary(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot open the file ({exc.strerror})") from exc


def _open_text(path: Path) -> IO[str]:
    try:  # utf-8-sig drops the BOM Excel writes; newline="" lets csv see quoted newlines
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot open the file ({exc.strerror})") from exc


def _sniff_delimiter(header_line: str) -> str:
    """The most frequent of `,` `;` tab outside quotes in the header; `,` on a tie or none."""
    counts = dict.fromkeys(_DELIMITERS, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def _first_text_line(handle: IO[str], path: Path) -> tuple[int, str]:
    """Skip leading blank lines: (how many were skipped, the first non-blank line)."""
    skipped = 0
    try:
        for line in handle:
            if line.strip():
                return skipped, line
            skipped += 1
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, skipped + 1) from exc
    raise ImportFileError(f"{path}: the file is empty")


def _not_utf8(path: Path, line: int) -> ImportFileError:
    return ImportFileError(f"{path}: line {line} is not UTF-8 text; save the file as UTF-8")


def _csv_records(path: Path) -> Iterator[_Record]:
    """The header record first, then every data record (blank ones too, for progress)."""
    with _open_text(path) as handle:
        skipped, first = _first_text_line(handle, path)
        reader = csv.reader(chain([first], handle), delimiter=_sniff_delimiter(first))
        previous = skipped
        try:
            for cells in reader:
                end = skipped + reader.line_num
                yield _Record(previous + 1, end, cells, not any(c.strip() for c in cells))
                previous = end
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, previous + 1) from exc
        except csv.Error as exc:
            raise ImportFileError(f"{path}: line {previous + 1}: unreadable CSV ({exc})") from exc


def _jsonl_records(path: Path) -> Iterator[_Record]:
    """Every physical line as raw bytes: huge lines are never decoded twice or split."""
    seen_content = False
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(_BOM)
            blank = not raw.strip()
            seen_content = seen_content or not blank
            yield _Record(number, number, raw, blank)
    if not seen_content:
        raise ImportFileError(f"{path}: the file is empty")


def _chunks(
    records: Iterator[_Record],
    start_line: int,
    convert: Callable[[Any], dict],
    chunk_size: int,
) -> Iterator[ParsedChunk]:
    """Convert records, yielding a chunk every `chunk_size` data records.

    `lines_read` counts physical lines (blank and multi-line records included) so that the
    chunks add up to `count_data_lines`.
    """
    chunk, previous_end, taken = ParsedChunk(), start_line, 0
    for record in records:
        taken += 1
        if not record.blank:
            _convert_into(chunk, record, convert)
        if taken == chunk_size:
            chunk.lines_read = record.end - previous_end
            yield chunk
            chunk, previous_end, taken = ParsedChunk(), record.end, 0
            continue
        chunk.lines_read = record.end - previous_end
    if taken:
        yield chunk


def _convert_into(chunk: ParsedChunk, record: _Record, convert: Callable[[Any], dict]) -> None:
    try:
        message = convert(record.payload)
    except _RowProblem as problem:
        chunk.errors.append(RowError(record.line, str(problem)))
        return
    chunk.messages.append(message)
    chunk.lines.append(record.line)


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")


# ---------------------------------------------------------------------------------------
# Columns


def _snake(text: str) -> str:
    """`"E-mail Address"` → `"e_mail_address"`; letters of any script are kept."""
    return re.sub(r"[\W_]+", "_", text.strip().casefold()).strip("_")


@dataclass(frozen=True)
class _Columns:
    """Which column index holds each of our fields, for one file's header."""

    path: Path
    header: tuple[str, ...]
    index: dict[str, int]

    def has(self, name: str) -> bool:
        return name in self.index

    def value(self, cells: list[str], name: str) -> str:
        position = self.index.get(name)
        if position is None or position >= len(cells):
            return ""
        return cells[position].strip()

    def label(self, name: str) -> str:
        """The header as the user wrote it, so error messages point at their column."""
        position = self.index.get(name)
        return name if position is None else self.header[position].strip()


def _resolve_columns(
    path: Path, header: list[str], fields: dict[str, tuple[str, ...]], mapping: dict[str, str]
) -> _Columns:
    """Explicit mapping first, then our names and aliases in priority order."""
    index = _explicit_columns(path, header, fields, mapping)
    keys = [_snake(cell) for cell in header]
    for name, aliases in fields.items():
        if name in index:
            continue
        taken = set(index.values())
        for alias in aliases:
            found = [i for i, key in enumerate(keys) if key == alias and i not in taken]
            if found:
                index[name] = found[0]
                break
    return _Columns(path, tuple(header), index)


def _explicit_columns(
    path: Path, header: list[str], fields: dict[str, tuple[str, ...]], mapping: dict[str, str]
) -> dict[str, int]:
    index: dict[str, int] = {}
    for ours, theirs in mapping.items():
        name = _field_for(path, ours, fields)
        position = _find_header(header, theirs)
        if position is None:
            columns = ", ".join(repr(cell.strip()) for cell in header)
            raise ImportFileError(
                f"{path}: column '{theirs}' (mapped to {name}) is not in the file; "
                f"its columns are {columns}"
            )
        index[name] = position
    return index


def _field_for(path: Path, ours: str, fields: dict[str, tuple[str, ...]]) -> str:
    """Our field for a mapping key, which may be one of its aliases (`qty` → `quantity`)."""
    key = _snake(ours)
    for name, aliases in fields.items():
        if key == name or key in aliases:
            return name
    known = ", ".join(fields)
    raise ImportFileError(f"{path}: unknown field '{ours}' in the mapping; known: {known}")


def _find_header(header: list[str], wanted: str) -> int | None:
    folded = [cell.strip().casefold() for cell in header]
    if wanted.strip().casefold() in folded:
        return folded.index(wanted.strip().casefold())
    keys = [_snake(cell) for cell in header]
    return keys.index(_snake(wanted)) if _snake(wanted) in keys else None


def _read_header(path: Path, records: Iterator[_Record]) -> _Record:
    header = next(records)  # _first_text_line guarantees a record
    if header.blank:
        raise ImportFileError(f"{path}: line {header.line}: the header row has no column names")
    return header


def _require_any(columns: _Columns, names: tuple[str, ...], fields: dict) -> None:
    if any(columns.has(name) for name in names):
        return
    wanted = " or ".join(names)
    looked = ", ".join(repr(alias) for name in names for alias in fields[name][:4])
    raise ImportFileError(
        f"{columns.path}: required column {wanted} is missing (looked for {looked}); "
        f"name it with a mapping such as {names[0]}=<your column>"
    )


# ---------------------------------------------------------------------------------------
# Values


def _parse_datetime(raw: str, column: str) -> datetime:
    """One of the documented date forms → aware UTC datetime (naive means UTC)."""
    text = raw.strip()
    match = _SLASH_DATE.fullmatch(text)
    try:
        if match:
            parsed = datetime(*(int(part) for part in match.groups() if part is not None))
        else:
            parsed = datetime.fromisoformat(text)  # also YYYYMMDD and ...Z on 3.11+
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _RowProblem(
            f"column '{column}': cannot read {raw!r} as a date "
            "(use YYYY-MM-DD, an ISO 8601 date-time, YYYYMMDD or YYYY/MM/DD)"
        ) from exc


def _parse_number(raw: str, column: str) -> Decimal:
    """Amounts as people write them (see the module docstring) → Decimal, else a problem."""
    if _PLAIN_NUMBER.fullmatch(raw):  # the common case, without the separator rules
        return Decimal(raw)
    match = _AMOUNT.fullmatch(raw.strip())
    digits = _plain_digits(match.group(3), raw, column) if match else None
    if match is None or digits is None or (match.group(1) and match.group(2)):
        raise _RowProblem(f"column '{column}': cannot read {raw!r} as a number")
    sign = "-" if "-" in (match.group(1) + match.group(2)) else ""
    try:
        return Decimal(sign + digits)
    except InvalidOperation as exc:
        raise _RowProblem(f"column '{column}': cannot read {raw!r} as a number") from exc


def _plain_digits(text: str, raw: str, column: str) -> str | None:
    """`1,234.50` / `1.234,50` / `12,50` / `1.234.567` → `1234.50` etc.; None if malformed."""
    has_dot, has_comma = "." in text, "," in text
    if has_dot and has_comma:
        decimal_mark = "." if text.rfind(".") > text.rfind(",") else ","
        whole, _, fraction = text.rpartition(decimal_mark)
        return _grouped(whole, "," if decimal_mark == "." else ".", fraction)
    if has_comma and text.count(",") == 1:
        whole, _, fraction = text.partition(",")
        if len(fraction) == 3:
            raise _RowProblem(
                f"column '{column}': {raw!r} is ambiguous (thousands separator or decimal "
                "comma?); write it without the comma or with a decimal point"
            )
        return _grouped(whole, None, fraction)
    separator = "," if has_comma else "." if text.count(".") > 1 else None
    if separator:
        return _grouped(text, separator, "")
    whole, _, fraction = text.partition(".")
    return _grouped(whole, None, fraction if has_dot else "")


def _grouped(whole: str, separator: str | None, fraction: str) -> str | None:
    if separator and not re.fullmatch(rf"\d{{1,3}}(?:{re.escape(separator)}\d{{3}})+", whole):
        return None
    whole = whole.replace(separator, "") if separator else whole
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        return None
    return f"{whole}.{fraction}" if fraction else whole


def _parse_email(raw: str, column: str) -> str:
    email = raw.strip().lower()
    if email and not _EMAIL.fullmatch(email):
        raise _RowProblem(f"column '{column}': {raw!r} is not a valid email address")
    return email


def _parse_quantity(raw: str, column: str) -> int:
    value = _parse_number(raw, column)
    if value != value.to_integral_value() or value < 0:
        raise _RowProblem(f"column '{column}': {raw!r} is not a whole number of items")
    return int(value)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _money(value: Decimal) -> float:
    return float(value)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _message_id(prefix: str, data: bytes) -> str:
    return (prefix + _digest(data))[:MAX_MESSAGE_ID]


def _canonical(value: Any) -> bytes:
    """Sorted-key compact JSON; the stdlib handles what orjson cannot (ints > 64 bits)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode()


# ---------------------------------------------------------------------------------------
# Customers


def read_customers_csv(
    path: PathLike, mapping: dict[str, str] | None = None, chunk_size: int = 5000
) -> Iterator[ParsedChunk]:
    """One `identify` per row, streamed in chunks of `chunk_size` data lines.

    `userId` is the customer id column, else the lower-cased email. Known columns become
    Segment traits (`email`, `first_name`, `last_name`, `name`, `phone`, `created_at`);
    every other non-empty column is kept as a string trait under its snake_case header:
    CSV has no types, and guessing would turn zip codes like `01234` into numbers.
    """
    _check_chunk_size(chunk_size)
    source = Path(path)
    records = _csv_records(source)
    header = _read_header(source, records)
    columns = _resolve_columns(source, header.payload, CUSTOMER_FIELDS, mapping or {})
    _require_any(columns, ("user_id", "email"), CUSTOMER_FIELDS)
    extras = _extra_trait_keys(columns)
    yield from _chunks(
        records, header.end, lambda cells: _identify(cells, columns, extras), chunk_size
    )


def _extra_trait_keys(columns: _Columns) -> dict[int, str]:
    """Column index → trait key for every column that is not one of our fields."""
    used = set(CUSTOMER_FIELDS)
    extras: dict[int, str] = {}
    for position, title in enumerate(columns.header):
        if position in columns.index.values():
            continue
        key = base = _snake(title) or f"column_{position + 1}"
        suffix = 2
        while key in used:
            key, suffix = f"{base}_{suffix}", suffix + 1
        used.add(key)
        extras[position] = key
    return extras


def _identify(cells: list[str], columns: _Columns, extras: dict[int, str]) -> dict:
    traits = _customer_traits(cells, columns)
    user_id = columns.value(cells, "user_id") or traits.get("email", "")
    if not user_id:
        raise _RowProblem(_no_customer_id(columns))
    for position, key in extras.items():
        if position < len(cells) and cells[position].strip():
            traits[key] = cells[position].strip()
    message: dict[str, Any] = {"type": "identify", "userId": user_id, "traits": traits}
    if "created_at" in traits:
        message["timestamp"] = traits["created_at"]
    message["messageId"] = _message_id("import-identify-", _canonical(message))
    return message


def _no_customer_id(columns: _Columns) -> str:
    if not columns.has("user_id"):
        return f"column '{columns.label('email')}' is empty and the file has no customer id column"
    if not columns.has("email"):
        return f"column '{columns.label('user_id')}' is empty"
    return f"columns '{columns.label('user_id')}' and '{columns.label('email')}' are both empty"


def _customer_traits(cells: list[str], columns: _Columns) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    email = _parse_email(columns.value(cells, "email"), columns.label("email"))
    if email:
        traits["email"] = email
    for name in ("first_name", "last_name", "name", "phone"):
        if value := columns.value(cells, name):
            traits[name] = value
    if created := columns.value(cells, "created_at"):
        traits["created_at"] = _iso(_parse_datetime(created, columns.label("created_at")))
    return traits


# ---------------------------------------------------------------------------------------
# Orders


@dataclass(slots=True)
class _OrderRow:
    """One CSV row of an orders file, values parsed; empty strings mean "not given"."""

    line: int
    customer_id: str
    email: str
    ordered_at: datetime | None
    refunded_at: datetime | None
    amounts: dict[str, Decimal]
    currency: str
    status: str
    product: dict[str, Any] | None


@dataclass(slots=True)
class _Order:
    """An order's rows in file order, plus the first row problem found (which skips it)."""

    first_line: int
    rows: list[_OrderRow] = field(default_factory=list)
    problem: RowError | None = None


@dataclass(slots=True)
class _Merged:
    """Order-level values after reconciling an order's rows."""

    customer_id: str = ""
    email: str = ""
    ordered_at: datetime | None = None
    refunded_at: datetime | None = None
    amounts: dict[str, Decimal] = field(default_factory=dict)
    currency: str = ""
    status: str = ""


def read_orders_csv(
    path: PathLike, mapping: dict[str, str] | None = None, chunk_size: int = 5000
) -> Iterator[ParsedChunk]:
    """One `Order Completed` per order (plus `Order Refunded` when its status says so).

    Files may hold one row per order or one row per line item, and an order's rows need
    not be adjacent, so the whole file is read and grouped by order id before anything is
    yielded (memory follows the file, not the chunk); chunks then hold up to `chunk_size`
    messages in order of each order's first row, whose line is the message's line.

    Order-level values (customer, date, amounts, currency, status) come from the first row
    that has them, because line-item exports often fill them on the first row only; rows
    that disagree on customer or date are reported. Any problem in any row skips the whole
    order: its `messageId` depends on the order id only, so an order imported with items
    missing could never be repaired by re-importing a corrected file.

    A `status` of refunded/returned (not "partially refunded": the amount is unknown) adds
    an `Order Refunded` for the whole order, dated `refunded_at` if given, else the order
    date.
    """
    _check_chunk_size(chunk_size)
    source = Path(path)
    records = _csv_records(source)
    header = _read_header(source, records)
    columns = _resolve_columns(source, header.payload, ORDER_FIELDS, mapping or {})
    for required in (("order_id",), ("ordered_at",), ("customer_id", "email")):
        _require_any(columns, required, ORDER_FIELDS)
    orders, errors, last_line = _group_orders(records, columns, header.end)
    entries = _order_entries(orders, columns, errors)
    errors.sort(key=lambda error: error.line)
    yield from _order_chunks(entries, errors, header.end, last_line, chunk_size)


def _group_orders(
    records: Iterator[_Record], columns: _Columns, last_line: int
) -> tuple[dict[str, _Order], list[RowError], int]:
    """Parse every row and group by order id (insertion order = first appearance)."""
    orders: dict[str, _Order] = {}
    errors: list[RowError] = []
    for record in records:
        last_line = record.end
        if record.blank:
            continue
        order_id = columns.value(record.payload, "order_id")
        if not order_id:
            errors.append(RowError(record.line, f"column '{columns.label('order_id')}' is empty"))
            continue
        order = orders.setdefault(order_id, _Order(record.line))
        try:
            order.rows.append(_order_row(record, columns))
        except _RowProblem as problem:
            order.problem = order.problem or RowError(record.line, str(problem))
    return orders, errors, last_line


def _order_row(record: _Record, columns: _Columns) -> _OrderRow:
    cells = record.payload
    return _OrderRow(
        line=record.line,
        customer_id=columns.value(cells, "customer_id"),
        email=_parse_email(columns.value(cells, "email"), columns.label("email")),
        ordered_at=_optional_datetime(cells, columns, "ordered_at"),
        refunded_at=_optional_datetime(cells, columns, "refunded_at"),
        amounts=_row_amounts(cells, columns),
        currency=_parse_currency(columns.value(cells, "currency"), columns.label("currency")),
        status=columns.value(cells, "status"),
        product=_row_product(cells, columns),
    )


def _optional_datetime(cells: list[str], columns: _Columns, name: str) -> datetime | None:
    raw = columns.value(cells, name)
    return _parse_datetime(raw, columns.label(name)) if raw else None


def _row_amounts(cells: list[str], columns: _Columns) -> dict[str, Decimal]:
    amounts = {}
    for name in _ORDER_AMOUNTS:
        if raw := columns.value(cells, name):
            amounts[name] = _parse_number(raw, columns.label(name))
    if "discount" in amounts:  # some exports write discounts as negative amounts
        amounts["discount"] = abs(amounts["discount"])
    return amounts


def _parse_currency(raw: str, column: str) -> str:
    code = raw.upper()
    if code and not _CURRENCY_CODE.fullmatch(code):
        raise _RowProblem(f"column '{column}': {raw!r} is not a three-letter currency code")
    return code


def _row_product(cells: list[str], columns: _Columns) -> dict[str, Any] | None:
    """The row's line item (spec v2 product keys), or None when no product column is set.

    `product_id` falls back to the SKU: many shops only export SKUs, and the spec treats
    `product_id` as the item's identity.
    """
    sku = columns.value(cells, "sku")
    texts = {
        "product_id": columns.value(cells, "product_id") or sku,
        "sku": sku,
        "name": columns.value(cells, "product_name"),
        "category": columns.value(cells, "category"),
    }
    product: dict[str, Any] = {key: value for key, value in texts.items() if value}
    if raw_price := columns.value(cells, "price"):
        product["price"] = _parse_number(raw_price, columns.label("price"))
    if not product:
        return None
    raw_quantity = columns.value(cells, "quantity")
    quantity = _parse_quantity(raw_quantity, columns.label("quantity")) if raw_quantity else 1
    product["quantity"] = quantity
    return product


def _merge_rows(rows: list[_OrderRow], columns: _Columns) -> _Merged:
    """Order-level values: first non-empty wins; customer/date conflicts are problems."""
    merged = _Merged()
    for row in rows:
        for name in ("customer_id", "email", "ordered_at"):
            _merge_conflicting(merged, name, getattr(row, name), row.line, columns)
        merged.refunded_at = merged.refunded_at or row.refunded_at
        merged.currency = merged.currency or row.currency
        merged.status = merged.status or row.status
        for name, amount in row.amounts.items():
            merged.amounts.setdefault(name, amount)
    return merged


def _merge_conflicting(
    merged: _Merged, name: str, value: Any, line: int, columns: _Columns
) -> None:
    current = getattr(merged, name)
    if not value:
        return
    if not current:
        setattr(merged, name, value)
    elif current != value:
        raise _RowProblem(
            f"column '{columns.label(name)}': {_shown(value)!r} differs from "
            f"{_shown(current)!r} on an earlier row of the same order",
            line,
        )


def _shown(value: Any) -> str:
    return _iso(value) if isinstance(value, datetime) else str(value)


def _order_entries(
    orders: dict[str, _Order], columns: _Columns, errors: list[RowError]
) -> list[tuple[int, list[dict]]]:
    """(first line, messages) per good order; bad orders become errors naming the order."""
    entries = []
    for order_id, order in orders.items():
        try:
            if order.problem:
                raise _RowProblem(order.problem.reason, order.problem.line)
            entries.append((order.first_line, _order_messages(order_id, order, columns)))
        except _RowProblem as problem:
            line = problem.line or order.first_line
            errors.append(RowError(line, f"{problem}; order '{order_id}' was skipped"))
    return entries  # already in first-line order: dicts keep insertion order


def _order_messages(order_id: str, order: _Order, columns: _Columns) -> list[dict]:
    merged = _merge_rows(order.rows, columns)
    if merged.ordered_at is None:
        raise _RowProblem(f"column '{columns.label('ordered_at')}' is empty on every row")
    user_id = merged.customer_id or merged.email
    if not user_id:
        raise _RowProblem("the order has no customer id and no email on any row")
    products = [row.product for row in order.rows if row.product is not None]
    properties = _order_properties(order_id, merged, products)
    key = order_id.encode()
    completed = _track(user_id, merged.email, "Order Completed", merged.ordered_at, properties)
    completed["messageId"] = _message_id("import-order-", key)
    if _snake(merged.status) not in _REFUNDED_STATUSES:
        return [completed]
    refunded_at = merged.refunded_at or merged.ordered_at
    refund = _track(user_id, merged.email, "Order Refunded", refunded_at, properties)
    refund["properties"] = _refund_properties(properties)
    refund["messageId"] = _message_id("import-refund-", key)
    return [completed, refund]


def _track(
    user_id: str, email: str, event: str, at: datetime, properties: dict[str, Any]
) -> dict[str, Any]:
    """A `track` message; the email rides in `context.traits` for identity resolution."""
    message: dict[str, Any] = {"type": "track", "event": event, "userId": user_id}
    if email:
        message["context"] = {"traits": {"email": email}}
    message["timestamp"] = _iso(at)
    message["properties"] = properties
    return message


def _order_properties(order_id: str, merged: _Merged, products: list[dict]) -> dict[str, Any]:
    """Spec v2 properties; revenue = revenue, else total, else Σ price × qty − discount."""
    amounts = merged.amounts
    revenue = amounts.get("revenue", amounts.get("total"))
    priced = [p["price"] * p["quantity"] for p in products if "price" in p]
    if revenue is None and priced and len(priced) == len(products):
        revenue = sum(priced, Decimal(0)) - amounts.get("discount", Decimal(0))
    properties: dict[str, Any] = {"order_id": order_id}
    if revenue is not None:
        properties["revenue"] = _money(revenue)
        properties["total"] = _money(amounts.get("total", revenue))
    properties["currency"] = merged.currency or "USD"
    for name in ("discount", "shipping", "tax"):
        if name in amounts:
            properties[name] = _money(amounts[name])
    properties["products"] = [_product_json(product) for product in products]
    return properties


def _product_json(product: dict[str, Any]) -> dict[str, Any]:
    if "price" not in product:
        return dict(product)
    return {**product, "price": _money(product["price"])}


def _refund_properties(order: dict[str, Any]) -> dict[str, Any]:
    """A whole-order refund: the order's total (absent means the whole order downstream)."""
    refund = {name: order[name] for name in ("order_id", "total", "currency") if name in order}
    refund["products"] = [dict(product) for product in order["products"]]
    return refund


def _order_chunks(
    entries: list[tuple[int, list[dict]]],
    errors: list[RowError],
    header_end: int,
    last_line: int,
    chunk_size: int,
) -> Iterator[ParsedChunk]:
    """Messages in chunks of `chunk_size`.

    Each chunk's `lines_read` and errors cover the lines up to the next chunk's first
    message, so errors arrive in file order and `lines_read` adds up to the data lines.
    """
    if last_line <= header_end:
        return
    flat = [(line, message) for line, messages in entries for message in messages]
    slices = [flat[i : i + chunk_size] for i in range(0, len(flat), chunk_size)] or [[]]
    covered = header_end
    for number, part in enumerate(slices):
        last = number == len(slices) - 1
        boundary = last_line if last else slices[number + 1][0][0] - 1
        yield ParsedChunk(
            messages=[message for _, message in part],
            lines=[line for line, _ in part],
            errors=[error for error in errors if covered < error.line <= boundary],
            lines_read=boundary - covered,
        )
        covered = boundary


# ---------------------------------------------------------------------------------------
# Events


def read_events_jsonl(path: PathLike, chunk_size: int = 5000) -> Iterator[ParsedChunk]:
    """Each non-blank line is one Segment message, kept as-is for the ingest path to validate.

    Only a missing (or empty) `messageId` is filled in, with `import-` + sha256 of the
    line's canonical JSON, so the same event re-imported — even with its keys reordered —
    deduplicates. Lines are read one at a time as bytes, so memory follows the chunk.
    """
    _check_chunk_size(chunk_size)
    yield from _chunks(_jsonl_records(Path(path)), 0, _event_message, chunk_size)


def _event_message(raw: bytes) -> dict:
    try:
        message = _loads(raw)
    except ValueError as exc:
        raise _RowProblem(f"the line is not valid JSON ({_json_reason(exc)})") from exc
    if not isinstance(message, dict):
        kind = _JSON_KINDS.get(type(message), "a number")
        raise _RowProblem(f"the line must be a JSON object (a Segment message), not {kind}")
    if not message.get("messageId"):
        message["messageId"] = _message_id("import-", _canonical(message))
    return message


_JSON_KINDS = {list: "an array", str: "a string", bool: "true/false", type(None): "null"}


def _loads(raw: bytes) -> Any:
    if _BIG_NUMBER.search(raw):
        return json.loads(raw, parse_constant=_reject_constant)
    return orjson.loads(raw)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at character {exc.pos + 1}"
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    return str(exc)
