"""File import: customers/orders CSV and events JSONL → Segment messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from keepers.ingest.files import (
    ImportFileError,
    ParsedChunk,
    RowError,
    count_data_lines,
    parse_mapping,
    read_customers_csv,
    read_events_jsonl,
    read_orders_csv,
)


@dataclass
class Result:
    messages: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    lines_read: int = 0
    chunks: int = 0


def collect(chunks: list[ParsedChunk] | object) -> Result:
    result = Result()
    for chunk in chunks:
        assert len(chunk.messages) == len(chunk.lines)
        result.messages += chunk.messages
        result.lines += chunk.lines
        result.errors += chunk.errors
        result.lines_read += chunk.lines_read
        result.chunks += 1
    return result


def write(tmp_path: Path, name: str, text: str, *, bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def orders_by_id(result: Result, event: str = "Order Completed") -> dict[str, dict]:
    return {m["properties"]["order_id"]: m for m in result.messages if m["event"] == event}


# --- mapping -------------------------------------------------------------------------


def test_parse_mapping_splits_on_first_equals_and_trims() -> None:
    mapping = parse_mapping(["order_id = Order Number", "Email=E-mail", "total=Sum=Net"])
    assert mapping == {"order_id": "Order Number", "email": "E-mail", "total": "Sum=Net"}


@pytest.mark.parametrize("item", ["order_id", "=Order Number", "order_id=", "  "])
def test_parse_mapping_rejects_malformed_item_naming_it(item: str) -> None:
    with pytest.raises(ImportFileError, match="must look like"):
        parse_mapping([item])


def test_parse_mapping_rejects_field_mapped_twice() -> None:
    with pytest.raises(ImportFileError, match="'email' is mapped twice"):
        parse_mapping(["email=A", "email=B"])


# --- customers -----------------------------------------------------------------------


def test_customers_header_aliases_become_user_id_and_traits(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.csv",
        "Customer ID,E-mail,First Name,Surname,Phone Number,Signup Date\n"
        "c1, Ann@Example.COM ,Ann,Lee,+15550100,2023-02-01\n",
    )
    [message] = collect(read_customers_csv(path)).messages
    assert message["type"] == "identify"
    assert message["userId"] == "c1"
    assert message["traits"] == {
        "email": "ann@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "phone": "+15550100",
        "created_at": "2023-02-01T00:00:00+00:00",
    }
    assert message["timestamp"] == "2023-02-01T00:00:00+00:00"


def test_customers_without_created_at_have_no_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id,email\n7,a@x.io\n")
    [message] = collect(read_customers_csv(path)).messages
    assert "timestamp" not in message
    assert message["userId"] == "7"


def test_customers_explicit_mapping_matches_header_case_insensitively(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "Kundennummer,Mail Adresse,id\nK-9,k@x.de,old-id\n")
    mapping = parse_mapping(["user_id=KUNDENNUMMER", "email=mail adresse"])
    [message] = collect(read_customers_csv(path, mapping)).messages
    assert message["userId"] == "K-9"
    assert message["traits"]["email"] == "k@x.de"
    assert message["traits"]["id"] == "old-id"  # the unmapped alias column stays a trait


def test_mapping_to_a_missing_column_raises_naming_file_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id,email\n1,a@x.io\n")
    with pytest.raises(ImportFileError, match=r"c\.csv.*'Client Number'"):
        list(read_customers_csv(path, {"user_id": "Client Number"}))


def test_mapping_with_unknown_field_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id,email\n1,a@x.io\n")
    with pytest.raises(ImportFileError, match="unknown field 'shoe_size'"):
        list(read_customers_csv(path, {"shoe_size": "id"}))


def test_customers_other_columns_become_snake_case_string_traits(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id,Zip Code,Loyalty-Tier,Notes\n1,01234,Gold,\n")
    [message] = collect(read_customers_csv(path)).messages
    assert message["traits"] == {"zip_code": "01234", "loyalty_tier": "Gold"}


def test_customers_user_id_falls_back_to_lowercased_email(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "email,name\nBob@X.io,Bob\n")
    [message] = collect(read_customers_csv(path)).messages
    assert message["userId"] == "bob@x.io"
    assert message["traits"]["name"] == "Bob"


@pytest.mark.parametrize(
    ("delimiter", "bom"), [(",", False), (";", True), ("\t", False), ("\t", True)]
)
def test_customers_delimiter_and_bom_are_sniffed(tmp_path: Path, delimiter: str, bom: bool) -> None:
    rows = [["user_id", "email", "city"], ["u1", "a@x.io", "Köln, Ost"]]
    text = "\n".join(delimiter.join(row) for row in rows) + "\n"
    if delimiter == ",":
        text = text.replace("Köln, Ost", '"Köln, Ost"')
    path = write(tmp_path, "c.csv", text, bom=bom)
    [message] = collect(read_customers_csv(path)).messages
    assert message["userId"] == "u1"
    assert message["traits"]["city"] == "Köln, Ost"


def test_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "Email;id\nnot-an-email;1\n", bom=True)
    [error] = collect(read_customers_csv(path)).errors
    assert error.reason.startswith("column 'Email':")


def test_customers_bad_rows_reported_by_line_and_column_good_rows_kept(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "c.csv",
        "id,email,created_at\n"
        "1,a@x.io,2024-01-01\n"  # line 2
        "2,not-an-email,2024-01-01\n"  # line 3
        "3,c@x.io,2024-13-45\n"  # line 4
        ",,\n"  # line 5: blank, skipped silently
        ",,2024-01-01\n"  # line 6: no id, no email
        "7,g@x.io,\n",  # line 7
    )
    result = collect(read_customers_csv(path))
    assert [m["userId"] for m in result.messages] == ["1", "7"]
    assert result.lines == [2, 7]
    assert [e.line for e in result.errors] == [3, 4, 6]
    assert "column 'email'" in result.errors[0].reason
    assert "'not-an-email'" in result.errors[0].reason
    assert "column 'created_at'" in result.errors[1].reason
    assert "'2024-13-45'" in result.errors[1].reason
    assert "'id'" in result.errors[2].reason and "empty" in result.errors[2].reason


def test_customers_line_numbers_count_multiline_quoted_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", 'id,email,note\n1,a@x.io,"two\nlines"\n2,bad,\n')
    result = collect(read_customers_csv(path))
    assert result.lines == [2]
    assert result.messages[0]["traits"]["note"] == "two\nlines"
    assert [e.line for e in result.errors] == [4]


def test_customers_without_id_or_email_column_raise_naming_them(tmp_path: Path) -> None:
    path = write(tmp_path, "people.csv", "first_name,last_name\nA,B\n")
    with pytest.raises(ImportFileError, match=r"people\.csv.*user_id or email"):
        list(read_customers_csv(path))


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file_raises_naming_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty.csv", text)
    with pytest.raises(ImportFileError, match=r"empty\.csv.*empty"):
        list(read_customers_csv(path))
    with pytest.raises(ImportFileError, match="empty"):
        list(read_events_jsonl(path))


def test_missing_file_raises_import_file_error(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match=r"nope\.csv"):
        list(read_orders_csv(tmp_path / "nope.csv"))


def test_non_utf8_file_raises_import_file_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("id,name\n1,Jos\xe9\n".encode("latin-1"))
    with pytest.raises(ImportFileError, match="UTF-8"):
        list(read_customers_csv(path))


# --- orders --------------------------------------------------------------------------

LINE_ITEMS = (
    "Order Number,Customer ID,Email,Order Date,SKU,Product,Category,Unit Price,Qty\n"
    "A1,c1,ann@x.io,2024-03-05T10:00:00Z,S1,Shirt,Tops,20.00,2\n"  # line 2
    "B2,c2,bob@x.io,2024-03-06,S9,Hat,Hats,5.00,\n"  # line 3
    "A1,,,,S2,Socks,Feet,3.50,4\n"  # line 4: same order, not adjacent
)


def test_orders_line_items_grouped_including_non_adjacent_rows(tmp_path: Path) -> None:
    result = collect(read_orders_csv(write(tmp_path, "o.csv", LINE_ITEMS)))
    assert result.errors == []
    assert result.lines == [2, 3]
    order = orders_by_id(result)["A1"]
    assert order["type"] == "track"
    assert order["userId"] == "c1"
    assert order["timestamp"] == "2024-03-05T10:00:00+00:00"
    assert order["context"] == {"traits": {"email": "ann@x.io"}}
    assert order["properties"]["products"] == [
        {
            "product_id": "S1",
            "sku": "S1",
            "name": "Shirt",
            "category": "Tops",
            "price": 20.0,
            "quantity": 2,
        },
        {
            "product_id": "S2",
            "sku": "S2",
            "name": "Socks",
            "category": "Feet",
            "price": 3.5,
            "quantity": 4,
        },
    ]
    assert order["properties"]["revenue"] == 54.0
    assert order["properties"]["currency"] == "USD"
    assert orders_by_id(result)["B2"]["properties"]["products"][0]["quantity"] == 1


def test_orders_one_row_per_order_have_no_products(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "o.csv",
        "order_id;user_id;date;total;currency;shipping;tax\n"
        "1;u1;2024-01-02;99,90;eur;4,90;15,95\n"
        "2;u2;2024/01/03 14:05;10;;;\n",
    )
    result = collect(read_orders_csv(path))
    assert result.errors == []
    first, second = orders_by_id(result)["1"], orders_by_id(result)["2"]
    assert first["properties"] == {
        "order_id": "1",
        "revenue": 99.9,
        "total": 99.9,
        "currency": "EUR",
        "shipping": 4.9,
        "tax": 15.95,
        "products": [],
    }
    assert "context" not in first
    assert second["timestamp"] == "2024-01-03T14:05:00+00:00"
    assert second["properties"]["currency"] == "USD"


def test_orders_revenue_prefers_revenue_then_total_then_computed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "o.csv",
        "order_id,email,ordered_at,revenue,total,price,quantity,discount\n"
        "R,r@x.io,2024-01-01,80,100,50,2,\n"
        "T,t@x.io,2024-01-01,,100,50,2,\n"
        "C,c@x.io,2024-01-01,,,50,2,-15\n"
        "N,n@x.io,2024-01-01,,,,,\n",
    )
    orders = orders_by_id(collect(read_orders_csv(path)))
    assert (orders["R"]["properties"]["revenue"], orders["R"]["properties"]["total"]) == (80, 100)
    assert (orders["T"]["properties"]["revenue"], orders["T"]["properties"]["total"]) == (100, 100)
    assert orders["C"]["properties"]["revenue"] == 85.0  # 50 × 2 − 15 (sign ignored)
    assert orders["C"]["properties"]["discount"] == 15.0
    assert "revenue" not in orders["N"]["properties"]
    assert orders["N"]["userId"] == "n@x.io"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,234.50", 1234.5),
        ("€12.00", 12.0),
        ("12,50", 12.5),
        ("1.234,50", 1234.5),
        ("$ 7", 7.0),
        ("12.00 €", 12.0),
        ("-3.25", -3.25),
        ("1,234,567", 1234567.0),
    ],
)
def test_orders_amounts_accept_common_number_formats(
    tmp_path: Path, raw: str, expected: float
) -> None:
    path = write(tmp_path, "o.csv", f'order_id,email,date,total\n1,a@x.io,2024-01-01,"{raw}"\n')
    [message] = collect(read_orders_csv(path)).messages
    assert message["properties"]["total"] == expected


@pytest.mark.parametrize("raw", ["abc", "1,234", "12.5.3", "1,23,4.00", "--5", "12,5,0"])
def test_orders_unreadable_amount_reported_naming_column_and_order_skipped(
    tmp_path: Path, raw: str
) -> None:
    path = write(
        tmp_path,
        "o.csv",
        f'order_id,email,date,Grand Total\n1,a@x.io,2024-01-01,"{raw}"\n2,b@x.io,2024-01-01,5\n',
    )
    result = collect(read_orders_csv(path))
    assert list(orders_by_id(result)) == ["2"]
    [error] = result.errors
    assert error.line == 2
    assert "column 'Grand Total'" in error.reason
    assert repr(raw) in error.reason
    assert "order '1' was skipped" in error.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-03-05", "2024-03-05T00:00:00+00:00"),
        ("20240305", "2024-03-05T00:00:00+00:00"),
        ("2024/3/5", "2024-03-05T00:00:00+00:00"),
        ("2024-03-05 23:30:00", "2024-03-05T23:30:00+00:00"),
        ("2024-03-06T01:30:00+02:00", "2024-03-05T23:30:00+00:00"),
        ("2024-03-05T23:30:00.250Z", "2024-03-05T23:30:00.250000+00:00"),
    ],
)
def test_orders_dates_become_utc_iso(tmp_path: Path, raw: str, expected: str) -> None:
    path = write(tmp_path, "o.csv", f"order_id,email,ordered_at\n1,a@x.io,{raw}\n")
    [message] = collect(read_orders_csv(path)).messages
    assert message["timestamp"] == expected


@pytest.mark.parametrize("raw", ["05/03/2024", "March 5 2024", "2024-02-30"])
def test_orders_ambiguous_or_invalid_dates_are_row_errors(tmp_path: Path, raw: str) -> None:
    path = write(tmp_path, "o.csv", f"order_id,email,Order Date\n1,a@x.io,{raw}\n")
    result = collect(read_orders_csv(path))
    assert result.messages == []
    [error] = result.errors
    assert error.line == 2
    assert "column 'Order Date'" in error.reason
    assert "YYYY-MM-DD" in error.reason


def test_orders_refunded_status_adds_order_refunded(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "o.csv",
        "order_id,customer_id,date,total,Financial Status,refunded_at\n"
        "1,u1,2024-01-01,30,Refunded,2024-01-09\n"
        "2,u2,2024-01-02,40,paid,\n"
        "3,u3,2024-01-03,50,partially_refunded,\n"
        "4,u4,2024-01-04,60,RETURNED,\n",
    )
    result = collect(read_orders_csv(path))
    refunds = orders_by_id(result, "Order Refunded")
    assert sorted(refunds) == ["1", "4"]
    assert len(orders_by_id(result)) == 4
    assert refunds["1"]["timestamp"] == "2024-01-09T00:00:00+00:00"
    assert refunds["1"]["userId"] == "u1"
    assert refunds["1"]["properties"]["total"] == 30.0
    assert refunds["4"]["timestamp"] == "2024-01-04T00:00:00+00:00"
    assert refunds["1"]["messageId"] != orders_by_id(result)["1"]["messageId"]
    assert result.lines == [2, 2, 3, 4, 5, 5]


def test_orders_rows_disagreeing_on_customer_or_date_report_the_conflicting_row(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "o.csv",
        "order_id,Customer,email,date,sku,price\n"
        "A,c1,a@x.io,2024-01-01,S1,1\n"  # line 2
        "B,c2,b@x.io,2024-01-01,S1,1\n"  # line 3
        "A,c9,a@x.io,2024-01-01,S2,1\n"  # line 4: other customer
        "B,c2,b@x.io,2024-01-02,S2,1\n"  # line 5: other date
        "C,c3,c@x.io,2024-01-01,S1,1\n",  # line 6
    )
    result = collect(read_orders_csv(path))
    assert list(orders_by_id(result)) == ["C"]
    assert [e.line for e in result.errors] == [4, 5]
    assert "column 'Customer'" in result.errors[0].reason
    assert "'c9'" in result.errors[0].reason
    assert "order 'A' was skipped" in result.errors[0].reason
    assert "column 'date'" in result.errors[1].reason


def test_orders_without_customer_or_date_on_any_row_are_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "o.csv",
        "order_id,user_id,email,date\nA,,,2024-01-01\nB,u,,\n,u,,2024-01-01\nD,u,,2024-01-01\n",
    )
    result = collect(read_orders_csv(path))
    assert list(orders_by_id(result)) == ["D"]
    assert [e.line for e in result.errors] == [2, 3, 4]
    assert "customer id" in result.errors[0].reason
    assert "column 'date' is empty" in result.errors[1].reason
    assert "column 'order_id' is empty" in result.errors[2].reason


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        ("order_id,email,price", "ordered_at"),
        ("email,date,price", "order_id"),
        ("order_id,date,price", "customer_id or email"),
    ],
)
def test_orders_missing_required_column_raises_naming_it(
    tmp_path: Path, header: str, missing: str
) -> None:
    path = write(tmp_path, "shop.csv", f"{header}\nx,y,z\n")
    with pytest.raises(ImportFileError, match=rf"shop\.csv.*{missing}"):
        list(read_orders_csv(path))


def test_orders_explicit_mapping_renames_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "o.csv", "Beleg,Kunde,Datum,Menge,Artikel\n9,k1,2024-05-01,3,ART-1\n")
    mapping = parse_mapping(
        ["order_id=Beleg", "customer_id=kunde", "date=Datum", "qty=Menge", "sku=Artikel"]
    )
    [message] = collect(read_orders_csv(path, mapping)).messages
    assert message["userId"] == "k1"
    assert message["properties"]["order_id"] == "9"
    assert message["properties"]["products"] == [
        {"product_id": "ART-1", "sku": "ART-1", "quantity": 3}
    ]


def test_orders_bad_quantity_skips_whole_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "o.csv",
        "order_id,email,date,sku,qty\nA,a@x.io,2024-01-01,S1,1\nA,a@x.io,2024-01-01,S2,1.5\n",
    )
    result = collect(read_orders_csv(path))
    assert result.messages == []
    [error] = result.errors
    assert error.line == 3
    assert "column 'qty'" in error.reason


# --- determinism ---------------------------------------------------------------------


def test_same_file_parsed_twice_gives_identical_message_ids(tmp_path: Path) -> None:
    orders = write(tmp_path, "o.csv", LINE_ITEMS)
    customers = write(tmp_path, "c.csv", "id,email\n1,a@x.io\n2,b@x.io\n")
    events = write(tmp_path, "e.jsonl", '{"type":"track","event":"A","userId":"1"}\n')
    for reader, path in (
        (read_orders_csv, orders),
        (read_customers_csv, customers),
        (read_events_jsonl, events),
    ):
        first = [m["messageId"] for m in collect(reader(path)).messages]
        second = [m["messageId"] for m in collect(reader(path)).messages]
        assert first == second
        assert len(set(first)) == len(first)
        assert all(len(message_id) <= 100 for message_id in first)


def test_editing_an_amount_keeps_the_order_message_id(tmp_path: Path) -> None:
    before = collect(read_orders_csv(write(tmp_path, "a.csv", LINE_ITEMS)))
    edited = LINE_ITEMS.replace("S2,Socks,Feet,3.50,4", "S2,Socks,Feet,3.75,5")
    after = collect(read_orders_csv(write(tmp_path, "b.csv", edited)))
    assert orders_by_id(after)["A1"]["properties"] != orders_by_id(before)["A1"]["properties"]
    assert orders_by_id(after)["A1"]["messageId"] == orders_by_id(before)["A1"]["messageId"]
    assert orders_by_id(after)["A1"]["messageId"].startswith("import-order-")


def test_order_message_id_does_not_depend_on_file_name_or_row_position(tmp_path: Path) -> None:
    header, *rows = LINE_ITEMS.splitlines(keepends=True)
    shuffled = header + "".join(reversed(rows))
    first = orders_by_id(collect(read_orders_csv(write(tmp_path, "x.csv", LINE_ITEMS))))
    second = orders_by_id(collect(read_orders_csv(write(tmp_path, "y.csv", shuffled))))
    assert first["A1"]["messageId"] == second["A1"]["messageId"]
    assert first["A1"]["messageId"] != first["B2"]["messageId"]


def test_customer_message_id_changes_when_the_row_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id,email,plan\n1,a@x.io,free\n1,a@x.io,free\n1,a@x.io,pro\n")
    ids = [m["messageId"] for m in collect(read_customers_csv(path)).messages]
    assert ids[0] == ids[1]  # identical rows dedupe
    assert ids[0] != ids[2]  # an edited row updates traits


# --- events --------------------------------------------------------------------------


def test_events_bad_lines_reported_with_line_number_good_lines_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.jsonl",
        '{"type":"track","event":"A","userId":"1","messageId":"m1"}\n'
        "\n"
        '{"type":"track", "event": \n'
        "[1, 2]\n"
        '{"type":"page","userId":"2","messageId":"m2"}\n',
    )
    result = collect(read_events_jsonl(path))
    assert [m["messageId"] for m in result.messages] == ["m1", "m2"]
    assert result.lines == [1, 5]
    assert [e.line for e in result.errors] == [3, 4]
    assert "not valid JSON" in result.errors[0].reason
    assert "JSON object" in result.errors[1].reason


def test_events_missing_message_id_is_deterministic_and_key_order_independent(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "e.jsonl",
        '{"type":"track","event":"A","userId":"1","properties":{"a":1,"b":2}}\n'
        '{"userId":"1","properties":{"b":2,"a":1},"event":"A","type":"track"}\n'
        '{"type":"track","event":"A","userId":"2"}\n'
        '{"type":"track","event":"A","userId":"3","messageId":""}\n',
    )
    messages = collect(read_events_jsonl(path)).messages
    ids = [m["messageId"] for m in messages]
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3
    assert all(i.startswith("import-") and len(i) <= 100 for i in ids)
    assert messages[2] == {"type": "track", "event": "A", "userId": "2", "messageId": ids[2]}


@pytest.mark.parametrize("line", ['{"type":"track","v":NaN}', '{"a":Infinity}', "'x'"])
def test_events_non_standard_json_is_a_row_error(tmp_path: Path, line: str) -> None:
    result = collect(read_events_jsonl(write(tmp_path, "e.jsonl", line + "\n")))
    assert result.messages == []
    assert [e.line for e in result.errors] == [1]


def test_events_keep_big_integers_exactly(tmp_path: Path) -> None:
    path = write(tmp_path, "e.jsonl", '{"type":"track","userId":123456789012345678901234}\n')
    [message] = collect(read_events_jsonl(path)).messages
    assert message["userId"] == 123456789012345678901234


def test_events_with_bom_and_crlf_parse(tmp_path: Path) -> None:
    path = write(tmp_path, "e.jsonl", '{"type":"identify","userId":"1"}\r\n', bom=True)
    [message] = collect(read_events_jsonl(path)).messages
    assert message["userId"] == "1"
    assert orjson.dumps(message)


# --- chunking ------------------------------------------------------------------------


def test_customer_chunks_follow_chunk_size_and_lines_read_sums_to_data_lines(
    tmp_path: Path,
) -> None:
    rows = "".join(f"{i},u{i}@x.io\n" for i in range(23))
    path = write(tmp_path, "c.csv", "id,email\n" + rows + "\n")
    chunks = list(read_customers_csv(path, chunk_size=10))
    assert [len(c.messages) for c in chunks] == [10, 10, 3]
    assert sum(c.lines_read for c in chunks) == count_data_lines(path) == 24


def test_order_chunks_hold_chunk_size_messages_and_cover_every_line(tmp_path: Path) -> None:
    rows = "".join(f"O{i % 7},u{i % 7},2024-01-01,S{i},1\n" for i in range(20))
    path = write(tmp_path, "o.csv", "order_id,user_id,date,sku,price\n" + rows + "O9,u,bad,S,1\n")
    chunks = list(read_orders_csv(path, chunk_size=3))
    assert [len(c.messages) for c in chunks] == [3, 3, 1]
    assert sum(c.lines_read for c in chunks) == count_data_lines(path) == 21
    assert [e.line for c in chunks for e in c.errors] == [22]
    assert sum(len(m["properties"]["products"]) for c in chunks for m in c.messages) == 20


def test_event_chunks_count_blank_lines_as_read(tmp_path: Path) -> None:
    lines = "".join(f'{{"type":"track","event":"E{i}","userId":"u"}}\n\n' for i in range(5))
    path = write(tmp_path, "e.jsonl", lines)
    chunks = list(read_events_jsonl(path, chunk_size=4))
    assert [len(c.messages) for c in chunks] == [2, 2, 1]
    assert sum(c.lines_read for c in chunks) == count_data_lines(path) == 10


def test_header_only_file_yields_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "o.csv", "order_id,email,date\n")
    assert list(read_orders_csv(path)) == []
    assert list(read_customers_csv(write(tmp_path, "c.csv", "id,email\n"))) == []
    assert count_data_lines(path) == 0


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id\n1\n")
    with pytest.raises(ValueError, match="chunk_size"):
        list(read_customers_csv(path, chunk_size=0))
