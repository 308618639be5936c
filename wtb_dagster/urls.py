"""URLs as people see them: every URL in a message, log line or metadata has its password as `***`.

- `redact_url(url)` — the URL to show (`postgresql://user:***@host/db`);
- `scrub(text, url)` — any text (a driver's error message) without the URL's password in it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import sqlalchemy as sa

MASK = "***"

# scheme://user:password@rest — the password runs to the *last* "@" (an unencoded "@" in a
# password is a common mistake, and showing the part after it would leak half the secret).
_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<password>[^\s]*)@(?P<tail>[^@\s]*)"
)
# ?password=… in a URL's query, password=… in a libpq key=value connection string
_QUERY_PASSWORD = re.compile(r"(?i)(?P<key>[?&](?:ssl)?password=)(?P<password>[^&#\s]*)")
_KEYWORD_PASSWORD = re.compile(
    r"(?i)(?P<key>\b(?:ssl)?password\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|[^\s']+)"
)


def redact_url(url: str) -> str:
    """The URL with its password (userinfo or `password=` query parameter) shown as `***`."""
    text = str(url)
    match = _USERINFO.search(text)
    if match is not None and "@" not in match["password"]:
        try:
            text = sa.make_url(text).render_as_string(hide_password=True)
        except Exception:  # multiple hosts, a bad port…: SQLAlchemy cannot parse it
            text = _mask_userinfo(text)
    else:
        text = _mask_userinfo(text)
    text = _QUERY_PASSWORD.sub(lambda m: m["key"] + MASK, text)
    if "://" not in text:  # a key=value connection string
        text = _KEYWORD_PASSWORD.sub(lambda m: m["key"] + MASK, text)
    return text


def _mask_userinfo(text: str) -> str:
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@{m['tail']}", text)


def url_secrets(url: str) -> list[str]:
    """The password(s) a URL carries, as written and percent-decoded, longest first."""
    found: set[str] = set()
    text = str(url)
    for pattern in (_USERINFO, _QUERY_PASSWORD, _KEYWORD_PASSWORD):
        for match in pattern.finditer(text):
            found.add(match["password"].strip("'"))
    if not any("@" in secret for secret in found):  # else SQLAlchemy splits at the wrong "@"
        try:
            parsed = sa.make_url(text).password
        except Exception:
            parsed = None
        if parsed:
            found.add(str(parsed))
    secrets = {s for raw in found for s in (raw, unquote(raw)) if s}
    # libpq splits an unencoded "pa@ss" at its first "@" and names host "ss@host": the pieces
    # are secret too (short ones only where followed by "@", not to mask every "ss").
    pieces = {piece for s in secrets if "@" in s for piece in s.split("@")[1:] if piece}
    secrets |= {piece + "@" for piece in pieces}
    secrets |= {piece for piece in pieces if len(piece) >= 3}
    return sorted(secrets, key=len, reverse=True)


def scrub(text: str, *urls: str) -> str:
    """`text` with every password of `urls` replaced by `***` (and any URL in it redacted)."""
    result = str(text)
    for url in urls:
        for secret in url_secrets(url):
            result = result.replace(secret, MASK + "@" if secret.endswith("@") else MASK)
    return _mask_userinfo(result)
