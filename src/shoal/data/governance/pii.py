"""Personal data and secrets in text: e-mail addresses, IP addresses, phone numbers, credentials, private keys.

Precision comes first, because the corpora are mostly code: a version string is not an IP address, `user@host`
in an example is not an e-mail address, and a long integer literal is not a phone number. Each pattern is
therefore narrow, and candidates are checked further (addresses with `ipaddress`, reserved example domains and
documentation networks left alone) before they count.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

MARKERS = {"email": "<EMAIL>", "ip_address": "<IP_ADDRESS>", "phone_number": "<PHONE_NUMBER>",
           "credential": "<CREDENTIAL>", "private_key": "<PRIVATE_KEY>"}

# Domains reserved for documentation and tests (RFC 2606, RFC 6761): addresses there belong to nobody.
_RESERVED_DOMAINS = ("example.com", "example.org", "example.net", "localhost")
_RESERVED_TLDS = ("example", "test", "invalid", "localhost", "local")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,24}(?![\w@(\[-])(?!\.[A-Za-z0-9])(?!:[\w~/])")
# (not followed by "(" or "[": `q@k.transpose(-1, -2)` is a matrix product; "user@host.tld:path" is an scp target)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\w)")  # "1.0.0.127.in-addr" is a longer name
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})(?![\w:]|\.\w)")
# Dotted quads that are versions or section numbers: "version 1.2.3.4", "v2.0.1.3", "section 8.1.2.2", "§4.2.1.1".
_NOT_AN_ADDRESS_BEFORE = re.compile(r"(?:\b(?:versions?|releases?|v|sections?|sec)\b|rfc\d*#section-|\be\.g\.|§)[^\n]{0,25}$",
                                    re.IGNORECASE)
# Phone numbers only in a written-out form: international (+ and 8-15 digits with optional separators) or the
# North American (xxx) xxx-xxxx / xxx-xxx-xxxx; bare digit runs are left alone (they are integers in code).
_PHONE = re.compile(r"(?<![\w+.-])(?:\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"
                    r"|\(\d{3}\) ?\d{3}-\d{4}|(?:1[-. ])?\d{3}[-.]\d{3}[-.]\d{4})(?![\w-]|\.\d)")
_CREDENTIALS = re.compile("|".join([
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{60,255}\b",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,250}\b",  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API key
    r"\b[sr]k_live_[0-9A-Za-z]{20,250}\b",  # Stripe
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,250}\b",  # OpenAI / Anthropic style secret keys
    r"\bhf_[A-Za-z0-9]{34,40}\b",  # Hugging Face
    r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",  # JSON web token
]))
# `password = "hunter2-long"`-style assignments: the value is the secret.
_ASSIGNED_SECRET = re.compile(r"(?i)(?<![a-z])(?:password|passwd|pwd|secret|api_?key|access_?key|auth_?token|secret_?key)\w*"
                              r"[\"']?\s*[:=]\s*[\"']([^\"'\s]{8,200})[\"']")
_PLACEHOLDER_VALUE = re.compile(r"(?i)^(?:x+|\*+|\.+|changeme|change_me|password\d*|secret|example\w*|dummy\w*|"
                                r"test\w*|fake\w*|your[_-]?\w*|<.*>|\$\{.*\}|\{.*\}|%\(?\w*\)?s?)$")
# A quoted snake_case or UPPER_CASE name is a setting's name ("SECRET_KEY"), not its value.
_CONSTANT_NAME = re.compile(r"[a-z]+(?:_[a-z0-9]+)+|[A-Z]+(?:_[A-Z0-9]+)+")
_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
                          re.DOTALL)


@dataclass(frozen=True)
class Finding:
    kind: str  # a key of MARKERS
    start: int
    end: int
    text: str


def _emails(text: str):
    for m in _EMAIL.finditer(text):
        domain = m.group().rsplit("@", 1)[1].lower()
        if domain in _RESERVED_DOMAINS or domain.endswith(tuple("." + d for d in _RESERVED_DOMAINS)) \
                or domain.rsplit(".", 1)[-1] in _RESERVED_TLDS:
            continue
        yield Finding("email", m.start(), m.end(), m.group())


def _is_public(address: str) -> bool:
    """A globally routable address (not private, loopback, documentation, reserved or link-local)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6:  # only global unicast (2000::/3): "dead::beef" and slice-like "::2" are not addresses
        return ip in ipaddress.ip_network("2000::/3") and ip.is_global
    return ip.is_global


def _ip_addresses(text: str):
    for m in _IPV4.finditer(text):
        before = text[max(0, m.start() - 40):m.start()]
        last_octet = int(m.group().rsplit(".", 1)[1])
        # A version or section number in context, or an address no host has (a network's .0, a broadcast .255).
        if _NOT_AN_ADDRESS_BEFORE.search(before) or last_octet in (0, 255) or not _is_public(m.group()):
            continue
        yield Finding("ip_address", m.start(), m.end(), m.group())
    for m in _IPV6.finditer(text):
        if m.group().count(":") >= 2 and _is_public(m.group()):
            yield Finding("ip_address", m.start(), m.end(), m.group())


def _phones(text: str):
    for m in _PHONE.finditer(text):
        digits = sum(c.isdigit() for c in m.group())
        if 10 <= digits <= 15 or (m.group().startswith("+") and 8 <= digits <= 15):
            yield Finding("phone_number", m.start(), m.end(), m.group())


def _credentials(text: str):
    for m in _CREDENTIALS.finditer(text):
        yield Finding("credential", m.start(), m.end(), m.group())
    for m in _ASSIGNED_SECRET.finditer(text):
        value = m.group(1)
        if not _PLACEHOLDER_VALUE.match(value) and not _CONSTANT_NAME.fullmatch(value):
            yield Finding("credential", m.start(1), m.end(1), value)


def find_personal_data(text: str) -> list[Finding]:
    """Every finding in `text`, in order of position; where two overlap, the one found first by kind is kept
    (private keys, then credentials, e-mail addresses, IP addresses, phone numbers)."""
    keys = [Finding("private_key", m.start(), m.end(), m.group()) for m in _PRIVATE_KEY.finditer(text)]
    starts: list[int] = []  # kept findings, sorted by start; they never overlap, so only neighbours can clash
    kept: list[Finding] = []
    for finding in [*keys, *_credentials(text), *_emails(text), *_ip_addresses(text), *_phones(text)]:
        i = bisect.bisect_left(starts, finding.start)
        if (i > 0 and kept[i - 1].end > finding.start) or (i < len(kept) and kept[i].start < finding.end):
            continue
        starts.insert(i, finding.start)
        kept.insert(i, finding)
    return kept


def redact(text: str, findings: list[Finding] | None = None) -> str:
    """`text` with every finding replaced by the marker of its kind (<EMAIL>, <IP_ADDRESS>, ...)."""
    findings = find_personal_data(text) if findings is None else findings
    parts, position = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        parts += [text[position:f.start], MARKERS[f.kind]]
        position = f.end
    return "".join(parts) + text[position:]


def count_by_kind(findings: list[Finding]) -> dict[str, int]:
    counts = Counter(f.kind for f in findings)
    return {kind: counts.get(kind, 0) for kind in MARKERS}
