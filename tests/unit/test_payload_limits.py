"""Request bodies: decompression, limits and bad input are 400/413, never 500."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import orjson
import pytest

from keepers.errors import InvalidInput, PayloadTooLarge
from keepers.ingest.payload import Limits, decompress, prepare_batch, prepare_single

NOW = datetime(2026, 11, 24, tzinfo=UTC)
LIMITS = Limits()


def batch(items: list, **extra) -> bytes:
    return orjson.dumps({"batch": items, **extra})


def item(i: int = 0, **extra) -> dict:
    return {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"m{i}", **extra}


def test_gzip_bodies_are_decompressed():
    raw = batch([item()])
    assert decompress(gzip.compress(raw), "gzip", LIMITS.max_batch_bytes) == raw


def test_a_gzip_bomb_stops_at_the_limit():
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]")
    with pytest.raises(PayloadTooLarge, match="decompressed"):
        decompress(bomb, "gzip", LIMITS.max_batch_bytes)


def test_corrupt_gzip_is_bad_input():
    with pytest.raises(InvalidInput, match="gzip"):
        decompress(b"not gzip at all", "gzip", LIMITS.max_batch_bytes)


def test_unknown_content_encoding_is_bad_input():
    with pytest.raises(InvalidInput, match="br"):
        decompress(b"{}", "br", LIMITS.max_batch_bytes)


def test_more_than_2500_events_is_refused_with_the_count():
    with pytest.raises(InvalidInput, match="2,501") as info:
        prepare_batch(batch([item(i) for i in range(2501)]), NOW, LIMITS)
    assert info.value.code == "too_many_events"


def test_a_batch_over_500_kb_is_too_large():
    with pytest.raises(PayloadTooLarge):
        decompress(b"x" * (500 * 1024 + 1), None, LIMITS.max_batch_bytes)


def test_an_event_over_32_kb_inside_a_batch_is_named_by_its_message_id():
    big = item(1, properties={"blob": "x" * 33_000})
    with pytest.raises(PayloadTooLarge, match="m1"):
        prepare_batch(batch([item(0), big]), NOW, LIMITS)


def test_a_single_event_over_32_kb_is_too_large():
    body = orjson.dumps(item(properties={"blob": "x" * 33_000}))
    with pytest.raises(PayloadTooLarge, match="per event"):
        prepare_single("track", body, NOW, LIMITS)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"not json",
        b"[1, 2",
        b'{"a": NaN}',
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_non_json_and_pathological_json_are_bad_input(body):
    with pytest.raises(InvalidInput):
        prepare_batch(body[: LIMITS.max_batch_bytes], NOW, LIMITS)


def test_a_body_that_is_not_an_object_is_bad_input():
    with pytest.raises(InvalidInput, match="'batch'"):
        prepare_batch(b'{"batch": "nope"}', NOW, LIMITS)
    with pytest.raises(InvalidInput, match="JSON object"):
        prepare_single("track", b"[1]", NOW, LIMITS)


def test_invalid_items_are_reported_by_index_and_valid_ones_kept():
    prepared = prepare_batch(
        batch([item(0), {"type": "track", "event": "E"}, item(2)]), NOW, LIMITS
    )
    assert [e.message_id for e in prepared.events] == ["m0", "m2"]
    assert [(i, code) for i, code, _, _ in prepared.rejected] == [(1, "no_user_anon_id")]


def test_a_batch_where_every_item_is_invalid_is_bad_input():
    with pytest.raises(InvalidInput, match=r"batch\[0\]"):
        prepare_batch(batch([{"type": "track", "event": "E"}]), NOW, LIMITS)


def test_batch_level_context_is_merged_into_each_item_and_write_key_read_from_body():
    prepared = prepare_batch(
        batch(
            [item(0, context={"ip": "1.2.3.4"})],
            context={"library": {"name": "x"}},
            writeKey="wk_1",
        ),
        NOW,
        LIMITS,
    )
    assert prepared.events[0].context == {"library": {"name": "x"}, "ip": "1.2.3.4"}
    assert prepared.write_key == "wk_1"
