"""Ad-audience normalisation and hashing, against vectors built here from the documented
rules (interfaces.md §4): each expected hash is sha256 of the normalised string written out
by hand, so a change to a normaliser breaks a test instead of silently matching nobody."""

from __future__ import annotations

import hashlib

import pytest

from keepers.delivery.audiences import (
    Member,
    google_user_identifiers,
    is_sha256_hex,
    meta_hash,
    meta_rows,
    normalise_phone_google,
    normalise_phone_meta,
)
from keepers.errors import InvalidInput


def h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Published elsewhere (e.g. Meta/Google docs and countless integrations): sha256 of
# "test@example.com". Pinned as a literal so `h` itself is checked too.
TEST_EMAIL_SHA256 = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"


def google(member: Member) -> dict[str, object]:
    """The identifiers of one member keyed by kind, for readable assertions."""
    found: dict[str, object] = {}
    for identifier in google_user_identifiers(member):
        ((kind, value),) = identifier.items()
        found[kind] = value
    return found


def test_the_reference_email_hash_is_the_published_one():
    assert h("test@example.com") == TEST_EMAIL_SHA256
    assert meta_hash("EMAIL", "test@example.com") == TEST_EMAIL_SHA256
    assert google(Member(email="test@example.com"))["hashedEmail"] == TEST_EMAIL_SHA256


@pytest.mark.parametrize(
    "raw",
    ["Test@Example.com", "  TEST@example.COM\t\n", "test@example.com.", "\x0btest@example.com\0"],
)
def test_meta_email_is_trimmed_of_the_sdk_strip_set_and_lowercased(raw):
    assert meta_hash("EMAIL", raw) == TEST_EMAIL_SHA256


def test_meta_keeps_inner_characters_of_an_email():
    assert meta_hash("EMAIL", "john.doe@gmail.com") == h("john.doe@gmail.com")


def test_google_email_drops_all_whitespace_and_lowercases_but_keeps_a_trailing_dot():
    assert google(Member(email=" Te st@Example.COM "))["hashedEmail"] == TEST_EMAIL_SHA256
    # The trailing-dot strip is Meta's SDK habit, not Google's rule.
    assert google(Member(email="test@example.com."))["hashedEmail"] == h("test@example.com.")


def test_google_customer_match_does_not_remove_gmail_dots():
    member = Member(email="John.Doe@Gmail.com")
    assert google(member)["hashedEmail"] == h("john.doe@gmail.com")


@pytest.mark.parametrize(
    ("raw", "meta_plain", "google_plain"),
    [
        ("+1 (800) 555-0101", "18005550101", "+18005550101"),
        ("1-800-555-0101", "18005550101", "+18005550101"),
        ("0044 20 7946 0958", "442079460958", "+442079460958"),
        ("+49 30 1234567.", "49301234567", "+49301234567"),
    ],
)
def test_phone_is_digits_for_meta_and_e164_with_plus_for_google(raw, meta_plain, google_plain):
    assert normalise_phone_meta(raw) == meta_plain
    assert normalise_phone_google(raw) == google_plain
    assert meta_hash("PHONE", raw) == h(meta_plain)
    assert google(Member(phone=raw))["hashedPhoneNumber"] == h(google_plain)
    assert meta_hash("PHONE", raw) != google(Member(phone=raw))["hashedPhoneNumber"]


def test_the_two_phone_hashes_are_the_documented_ones():
    assert meta_hash("PHONE", "+1 800 555 0101") == (
        "cc4160cbb01658fcff52a57f3403e0e9c7a4735cff1574df41ee3f3036697468"
    )
    assert google(Member(phone="+1 800 555 0101"))["hashedPhoneNumber"] == (
        "61d6c2976b5d92b1ad63073a12fddd26040cd980067d03a93dd1cc50f1a3ac68"
    )


def test_a_phone_without_digits_gives_no_identifier():
    assert meta_hash("PHONE", "n/a") == ""
    assert "hashedPhoneNumber" not in google(Member(phone="n/a"))


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("  Mary-Ann. ", "maryann"),
        ("O'Brien", "obrien"),
        ("José", "josé"),
        ("VAN DER BERG", "vanderberg"),
    ],
)
def test_meta_names_keep_letters_only_lowercased_utf8(raw, plain):
    assert meta_hash("FN", raw) == h(plain)
    assert meta_hash("LN", raw) == h(plain)


def test_google_first_name_collapses_spaces_and_last_name_drops_punctuation():
    member = Member(
        first_name="  Mary   Ann ", last_name="St. O'Brien-Smith", country="us", zip="94107"
    )
    address = google(member)["addressInfo"]
    assert address["hashedFirstName"] == h("mary ann")
    assert address["hashedLastName"] == h("st obriensmith")


def test_meta_country_and_zip_are_normalised_and_hashed():
    assert meta_hash("COUNTRY", " US ") == h("us")
    assert meta_hash("ZIP", "94107-1234", country="us") == h("94107")
    assert meta_hash("ZIP", "941071234", country="us") == h("94107")
    assert meta_hash("ZIP", "SW1A 1AA", country="gb") == h("sw1a1aa")


def test_google_sends_country_code_and_postal_code_unhashed():
    member = Member(first_name="Ann", last_name="Lee", country="us", zip=" 94107 ")
    assert google(member)["addressInfo"] == {
        "hashedFirstName": h("ann"),
        "hashedLastName": h("lee"),
        "countryCode": "US",
        "postalCode": "94107",
    }


def test_google_address_needs_all_four_parts():
    assert "addressInfo" not in google(Member(first_name="Ann", last_name="Lee", country="US"))
    assert "addressInfo" not in google(Member(first_name="Ann", country="US", zip="94107"))


def test_prehashed_values_pass_through_lowercased_for_both_platforms():
    digest = h("someone@example.com")
    phone_digest = h("+18005550101")
    assert meta_hash("EMAIL", digest.upper()) == digest
    assert meta_hash("PHONE", f" {phone_digest} ") == phone_digest  # not digit-stripped
    assert meta_hash("FN", digest) == digest
    found = google(Member(email=digest.upper(), phone=phone_digest))
    assert found == {"hashedEmail": digest, "hashedPhoneNumber": phone_digest}


def test_hashed_country_or_zip_cannot_become_a_google_address():
    member = Member(first_name="Ann", last_name="Lee", country=h("us"), zip=h("94107"))
    assert "addressInfo" not in google(member)


def test_meta_external_id_is_sent_as_is_and_unhashed():
    assert meta_hash("EXTERN_ID", "Cust-0042") == "Cust-0042"


def test_meta_refuses_a_schema_key_it_does_not_upload():
    with pytest.raises(InvalidInput, match="MADID"):
        meta_hash("MADID", "x")


def test_meta_rows_keep_used_columns_and_fill_gaps_with_empty_strings():
    members = [
        Member(email="A@x.com", external_id="c1"),
        Member(phone="+1 800 555 0101", country="US"),
        Member(first_name="   "),  # nothing usable: left out
    ]
    schema, data = meta_rows(members)
    assert schema == ["EXTERN_ID", "EMAIL", "PHONE", "COUNTRY"]
    assert data == [
        ["c1", h("a@x.com"), "", ""],
        ["", "", h("18005550101"), h("us")],
    ]


def test_every_hash_is_64_lowercase_hex():
    member = Member(
        email="X@Y.org", phone="+33 1 23 45 67 89", first_name="Zoë", last_name="Ünal", zip="75001"
    )
    values = [meta_hash(k, v) for k, v in [("EMAIL", member.email), ("PHONE", member.phone)]]
    values += [meta_hash("FN", member.first_name), meta_hash("LN", member.last_name)]
    for value in values:
        assert len(value) == 64 and value == value.lower() and is_sha256_hex(value)
