"""The webhook rules that need no database: which URLs may be registered, which addresses a delivery
may reach, the signature and the backoff."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import pytest

from jobs.webhooks import MAX_URL_LENGTH, address_kind, check_url, retry_delay, sign

REFUSED_WITHOUT_THE_SETTING = {
    "http://127.0.0.1:9000/hook": "loopback",
    "http://127.8.9.10/": "loopback",
    "https://10.1.2.3/": "private",
    "http://192.168.0.10/": "private",
    "http://172.16.5.5/": "private",
    "http://169.254.169.254/latest/meta-data/": "link-local",
    "http://0.0.0.0:80/": "unspecified",
    "http://[::1]:8080/": "loopback",
    "http://[fe80::1%25eth0]/": "link-local",
    "http://[fd00::5]/": "private",
    "http://[::ffff:10.0.0.1]/": "private",  # IPv4-mapped IPv6 is judged as the IPv4 it maps
    "http://100.64.0.1/": "non-global",  # carrier-grade NAT
    "http://224.0.0.1/": "multicast",
    "http://localhost:8000/hook": "loopback name",
    "http://api.localhost/": "loopback name",
}


@pytest.mark.parametrize("url, kind", REFUSED_WITHOUT_THE_SETTING.items())
def test_non_public_destinations_are_refused_unless_the_operator_allows_them(url, kind):
    reason = check_url(url, allow_private=False)
    assert reason is not None and kind in reason and "KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS" in reason
    assert check_url(url, allow_private=True) is None


@pytest.mark.parametrize("url, why", [
    ("ftp://example.com/", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://example.com/", "scheme"),
    ("https://user:pw@example.com/", "credentials"),
    ("https://user@example.com/", "credentials"),
    ("https:///path", "host"),
    ("example.com/hook", "scheme"),
    ("https://example.com/#frag", "fragment"),
    ("https://example.com:0/", "port"),
    ("https://example.com:99999/", "not a valid URL"),
    ("https://exa mple.com/", "spaces"),
    ("https://example.com/\x00", "control"),
    ("https://bücher.example/", "ASCII"),
    ("https://example.com/" + "a" * MAX_URL_LENGTH, "at most"),
])
def test_malformed_urls_are_refused_whatever_the_setting(url, why):
    for allow in (False, True):
        reason = check_url(url, allow_private=allow)
        assert reason is not None and why in reason, reason


@pytest.mark.parametrize("url", ["https://example.com/hook", "http://hooks.example.org:8080/a?b=c",
                                 "https://8.8.8.8/", "https://[2606:4700::1111]/", "HTTPS://Example.COM/x"])
def test_public_urls_are_accepted(url):
    assert check_url(url, allow_private=False) is None


def test_address_kinds():
    assert address_kind(ipaddress.ip_address("93.184.216.34")) is None
    assert address_kind(ipaddress.ip_address("2606:4700::1111")) is None
    assert address_kind(ipaddress.ip_address("203.0.113.7")) is not None  # documentation range
    assert address_kind(ipaddress.ip_address("::ffff:127.0.0.1")) == "loopback"


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"id":"evt_1","type":"job.succeeded"}'
    expected = hmac.new(b"whsec_abc", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("whsec_abc", 1700000000, body) == f"t=1700000000,v1={expected}"
    assert sign("whsec_abd", 1700000000, body) != sign("whsec_abc", 1700000000, body)
    assert sign("whsec_abc", 1700000001, body) != sign("whsec_abc", 1700000000, body)
    second = hmac.new(b"whsec_old", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(("whsec_abc", "whsec_old"), 1700000000, body) == f"t=1700000000,v1={expected},v1={second}"


def test_backoff_doubles_up_to_its_cap():
    assert [retry_delay(n, base=30, cap=3600) for n in range(1, 10)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert retry_delay(10_000, base=0.2, cap=5) == 5


def test_the_readmes_verification_snippet_accepts_our_signature_and_nothing_else():
    """README's receiver-side check, run as written, against the signature the sender makes."""
    import re
    import time
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Webhooks", 1)[1].split("\n### ", 1)[0]
    [snippet] = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict = {}
    exec(snippet, namespace)  # our own documentation, not user content
    verify = namespace["verify"]
    body, now = b'{"id":"evt_1"}', int(time.time())
    assert verify("whsec_abc", sign("whsec_abc", now, body), body)
    assert not verify("whsec_abd", sign("whsec_abc", now, body), body)
    assert not verify("whsec_abc", sign("whsec_abc", now, body), body + b" ")
    assert not verify("whsec_abc", sign("whsec_abc", now - 3600, body), body)  # a replay an hour later
    assert not verify("whsec_abc", "garbage", body)
    rotated = sign(("whsec_new", "whsec_abc"), now, body)  # after a rotation: both secrets sign
    assert verify("whsec_abc", rotated, body) and verify("whsec_new", rotated, body)
    assert not verify("whsec_other", rotated, body)
