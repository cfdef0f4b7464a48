"""Personal data and secrets: what must be found, and the look-alikes in code that must not."""

import pytest

from shoal.data.governance.pii import count_by_kind, find_personal_data, redact

AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLQ"  # built from parts so that this file itself holds no credential pattern
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
PRIVATE_KEY = "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\n-----END RSA " + "PRIVATE KEY-----"


@pytest.mark.parametrize("text, kind, found", [
    ("write to jane.doe@acme-corp.io for access", "email", "jane.doe@acme-corp.io"),
    ("Contact: <bob+news@mail.co.uk>.", "email", "bob+news@mail.co.uk"),
    ("server at 8.8.4.4 answered", "ip_address", "8.8.4.4"),
    ("connect(('151.101.1.69', 443))", "ip_address", "151.101.1.69"),
    ("AAAA 2606:4700:4700::1111 resolves", "ip_address", "2606:4700:4700::1111"),
    ("call +44 20 7946 0958 today", "phone_number", "+44 20 7946 0958"),
    ("phone: (415) 555-2671", "phone_number", "(415) 555-2671"),
    ("fax 415-555-2671.", "phone_number", "415-555-2671"),
    ("toll free 1-800-555-1234", "phone_number", "1-800-555-1234"),
    ("The server is 93.184.216.34.", "ip_address", "93.184.216.34"),
    ("reach it via 93.184.216.34 or the vpn", "ip_address", "93.184.216.34"),
    ("Contact john.smith@gmail.com: he knows", "email", "john.smith@gmail.com"),
    ('password = "Summer2023"', "credential", "Summer2023"),
    ('SECRET_KEY = "djangoinsecurekey123456"', "credential", "djangoinsecurekey123456"),
    (f"aws_access_key_id = {AWS_KEY}", "credential", AWS_KEY),
    (f"token: {GITHUB_TOKEN}", "credential", GITHUB_TOKEN),
    ('DB_PASSWORD = "tr0ub4dor&3horse"', "credential", "tr0ub4dor&3horse"),
    (f"key = '''\n{PRIVATE_KEY}\n'''", "private_key", PRIVATE_KEY),
])
def test_finds_personal_data_and_secrets(text, kind, found):
    findings = find_personal_data(text)
    assert [(f.kind, f.text) for f in findings] == [(kind, found)]
    assert text[findings[0].start:findings[0].end] == found


@pytest.mark.parametrize("text", [
    "Python 3.11.7 on linux; numpy 1.26.4.0 wheels",  # versions, with three or more dots
    'version = "1.2.3.4"',  # four parts, but a version
    "__version__ = 'v2.0.1.3'",
    "# the HTML 5 spec, section 8.1.2.2, doesn't allow; see rfc7231#section-7.1.1.1",
    'the HTML5 specs sections "8.2.4.44 Bogus comment"; ptr 1.0.0.127.in-addr.arpa',
    "bind to 127.0.0.1 or 0.0.0.0 or 10.1.2.3 or 192.168.0.7",  # loopback, unspecified, private networks
    "the docs use 192.0.2.1 and 203.0.113.9",  # documentation networks (RFC 5737)
    "ssh user@host and git@github.com:python/cpython.git",  # user@host, scp-style targets
    "@property\ndef name(self): ...\n@functools.cache",  # decorators
    "mail alice@example.com or bob@test.example.org or root@localhost",  # reserved example domains
    "x = a[::2]; y = b[1::3]; t = '12:30:45'; std::vector<int>",  # slices, times, C++
    "n = 4155552671; big = 12345678901234; t = 1700000000.123",  # integers are not phone numbers
    "date 2024-01-15 and id 123-45-6789-0",
    'password = "changeme"\napi_key = "<your-key-here>"\nsecret = "${SECRET}"\npassword = "xxxxxxxx"',
    "password = get_password()\nsecret_key = settings.SECRET_KEY\napi_key = 'API_KEY_NAME'",
    "scores = q@k.transpose(-2, -1); y = x@self.weight[0]",  # matrix products
    "sha = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'",
])
def test_look_alikes_are_not_findings(text):
    assert find_personal_data(text) == []


def test_redact_replaces_each_finding_with_its_typed_marker():
    text = f"mail jane@acme.io from 8.8.8.8, call +1 415 555 2671, key {AWS_KEY}.\n{PRIVATE_KEY}\nversion 1.2.3.4"
    findings = find_personal_data(text)
    assert count_by_kind(findings) == {"email": 1, "ip_address": 1, "phone_number": 1, "credential": 1,
                                       "private_key": 1}
    assert redact(text, findings) == ("mail <EMAIL> from <IP_ADDRESS>, call <PHONE_NUMBER>, key <CREDENTIAL>.\n"
                                      "<PRIVATE_KEY>\nversion 1.2.3.4")
    assert redact("nothing to see") == "nothing to see"
