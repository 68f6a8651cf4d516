"""Open and click tracking: signed links back to Keepers, so opens and clicks come back as
events ('Email Opened', 'Email Link Clicked') tied to the message that carried them.

A click link carries the message reference (its Message-ID) and the destination, signed
with HMAC-SHA256: the redirect endpoint only ever sends people to a URL that was in one of
our own emails, so it cannot be used as an open redirect. The open pixel carries the
reference alone. Unsubscribe links are never rewritten (the one-click contract needs them
as they are), nor are `mailto:` and other non-web links.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from html import escape, unescape

from keepers.errors import InvalidInput

_CONTEXT = b"keepers-link-v1\x00"
_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)
MAX_TOKEN = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_link(secret: bytes, reference: str, url: str | None = None) -> str:
    """A token naming a message (and, for a click, where to go)."""
    payload = json.dumps({"r": reference, "u": url}, separators=(",", ":")).encode()
    mac = hmac.new(secret, _CONTEXT + payload, hashlib.sha256).digest()[:16]
    return f"{_b64(payload)}.{_b64(mac)}"


def verify_link(secret: bytes, token: str) -> tuple[str, str | None]:
    """(reference, url) from a token made by `sign_link`; InvalidInput for anything else."""
    bad = InvalidInput("token: not a valid tracking link")
    if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 1:
        raise bad
    try:
        payload, mac = (_unb64(part) for part in token.split("."))
    except (binascii.Error, ValueError):
        raise bad from None
    expected = hmac.new(secret, _CONTEXT + payload, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(mac, expected):
        raise bad
    data = json.loads(payload)
    return str(data["r"]), data.get("u")


def track_html(html: str, *, base_url: str, secret: bytes, reference: str, keep: str) -> str:
    """`html` with every web link sent through the click endpoint (except those starting
    with `keep`, the unsubscribe link) and an open pixel before `</body>` (or at the end)."""
    root = base_url.rstrip("/")

    def rewrite(match: re.Match[str]) -> str:
        url = unescape(match.group(3))
        if url.startswith(keep):
            return match.group(0)
        token = sign_link(secret, reference, url)
        return f"{match.group(1)}{match.group(2)}{escape(f'{root}/c/{token}')}{match.group(2)}"

    tracked = _HREF.sub(rewrite, html)
    pixel = (
        f'<img src="{escape(root)}/o/{sign_link(secret, reference)}" width="1" height="1" '
        'alt="" style="display:block;border:0">'
    )
    at = tracked.lower().rfind("</body>")
    return tracked[:at] + pixel + tracked[at:] if at >= 0 else tracked + pixel
