"""Normalising Segment messages: ids, required fields, timestamps and clock skew."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keepers.domain.events import MessageRejected, normalize_message, parse_timestamp

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def norm(message: dict, **kwargs):
    return normalize_message(message, received_at=NOW, **kwargs)


def test_clock_skew_is_corrected_as_segment_does():
    # Device clock 1 hour fast: it says the event happened at 13:00 and was sent at 13:00:05.
    event = norm(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "timestamp": "2026-11-24T13:00:00Z",
            "sentAt": "2026-11-24T13:00:05Z",
        }
    )
    assert event.timestamp == NOW - timedelta(seconds=5)  # receivedAt − (sentAt − original)
    assert event.original_timestamp == datetime(2026, 11, 24, 13, 0, tzinfo=UTC)
    assert event.sent_at == datetime(2026, 11, 24, 13, 0, 5, tzinfo=UTC)
    assert event.received_at == NOW


def test_batch_sent_at_applies_to_items_without_their_own():
    event = norm(
        {"type": "track", "userId": "u", "event": "E", "timestamp": "2026-11-24T11:00:00Z"},
        batch_sent_at=datetime(2026, 11, 24, 11, 0, 10, tzinfo=UTC),
    )
    assert event.timestamp == NOW - timedelta(seconds=10)


def test_without_sent_at_the_client_timestamp_is_kept_for_historical_imports():
    event = norm({"type": "track", "userId": "u", "event": "E", "timestamp": "2020-01-02"})
    assert event.timestamp == datetime(2020, 1, 2, tzinfo=UTC)


def test_missing_timestamp_uses_the_receive_time():
    event = norm({"type": "track", "userId": "u", "event": "E"})
    assert event.timestamp == NOW and event.original_timestamp is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T06:02:36.915+00:00", datetime(2026, 11, 24, 6, 2, 36, 915000, tzinfo=UTC)),
        ("2026-11-24T06:02:41.212856+00:00", datetime(2026, 11, 24, 6, 2, 41, 212856, tzinfo=UTC)),
        ("2026-11-24T06:02:36.915Z", datetime(2026, 11, 24, 6, 2, 36, 915000, tzinfo=UTC)),
        ("2015-2-02T00:30:08.276Z", datetime(2015, 2, 2, 0, 30, 8, 276000, tzinfo=UTC)),
        ("2026-11-24T08:00:00+02:00", datetime(2026, 11, 24, 6, 0, tzinfo=UTC)),
        ("2026-11-24 06:00:00", datetime(2026, 11, 24, 6, 0, tzinfo=UTC)),
    ],
)
def test_timestamps_are_parsed_leniently_into_utc(text, expected):
    assert parse_timestamp(text, "timestamp") == expected


def test_unreadable_timestamp_names_the_field():
    with pytest.raises(MessageRejected, match="'timestamp'") as info:
        norm({"type": "track", "userId": "u", "event": "E", "timestamp": "last tuesday-ish"})
    assert info.value.code == "invalid_timestamp"


def test_null_ids_count_as_absent_and_numbers_become_strings():
    event = norm({"type": "identify", "userId": 42, "anonymousId": None})
    assert event.user_id == "42" and event.anonymous_id is None


def test_a_message_needs_a_user_or_anonymous_id():
    with pytest.raises(MessageRejected) as info:
        norm({"type": "track", "userId": None, "anonymousId": "", "event": "E"})
    assert info.value.code == "no_user_anon_id"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "track", "userId": "u"}, "event"),
        ({"type": "group", "userId": "u"}, "groupId"),
        ({"type": "alias", "userId": "u"}, "previousId"),
        ({"type": "alias", "anonymousId": "a", "previousId": "p"}, "userId"),
        ({"type": "track", "userId": "u", "event": "E", "properties": [1]}, "properties"),
        ({"type": "track", "userId": {"a": 1}, "event": "E"}, "userId"),
        ({"type": "shout", "userId": "u"}, "type"),
    ],
)
def test_spec_violations_name_the_field(message, field):
    with pytest.raises(MessageRejected, match=f"'{field}'"):
        norm(message)


def test_message_id_longer_than_100_characters_is_rejected():
    with pytest.raises(MessageRejected, match="messageId"):
        norm({"type": "track", "userId": "u", "event": "E", "messageId": "x" * 101})


def test_missing_message_id_is_assigned():
    first = norm({"type": "track", "userId": "u", "event": "E"})
    second = norm({"type": "track", "userId": "u", "event": "E"})
    assert first.message_id and first.message_id != second.message_id


def test_group_id_from_context_links_b2b_events_to_the_account():
    event = norm(
        {"type": "track", "userId": "u", "event": "Trial Started", "context": {"groupId": "acct-1"}}
    )
    assert event.group_id == "acct-1"


def test_implied_type_from_the_path_wins_over_the_body():
    event = norm({"type": "identify", "userId": "u", "event": "E"}, implied_type="track")
    assert event.type == "track" and event.event == "E"


def test_properties_nested_deeper_than_the_store_can_write_are_rejected_by_name():
    nested: dict = {}
    cursor = nested
    for _ in range(300):
        cursor["a"] = {}
        cursor = cursor["a"]
    with pytest.raises(MessageRejected, match="'properties' is nested too deeply"):
        norm({"type": "track", "userId": "u", "event": "E", "properties": nested})


def test_json_text_for_the_store_is_made_once_and_nul_escapes_are_neutralised():
    event = norm({"type": "track", "userId": "u", "event": "E", "properties": {"q": "a\x00b"}})
    assert event.properties_json == '{"q":"a\\ufffdb"}'
    assert event.traits_json is None
