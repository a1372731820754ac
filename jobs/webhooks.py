"""What a webhook is allowed to be, and how a delivery is signed. No SQL (jobs/webhooks_repo.py) and
no HTTP (worker/webhook_sender.py): the rules both the API and the worker's sender apply.

A webhook URL is a door into the network the service runs in, so its destination is checked twice:
at registration from the URL alone (an IP literal, or a `localhost` name), and on every delivery
after DNS resolution, where every address the name resolves to must be globally routable
(`refusal`). KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS lifts both checks, for an operator whose receivers
live on a private network (and for tests, whose receiver listens on 127.0.0.1).

Signature (as Stripe's): header `KD-Signature: t=<unix seconds>,v1=<hex>` where hex is
HMAC-SHA256(secret, f"{t}." + body). `t` is the attempt's time, so every attempt is signed anew and a
receiver can refuse old replays; the body is the same bytes on every attempt. After a rotation the
header carries a second `v1=` made with the previous secret until that one expires, so receivers can
switch secrets without missing an event.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"
SECRET_DISPLAY_LENGTH = 10  # "whsec_" and 4 more characters: enough to tell secrets apart, not to use one
SIGNATURE_HEADER = "KD-Signature"
EVENT_ID_HEADER = "KD-Event-Id"
EVENT_TYPE_HEADER = "KD-Event-Type"
DELIVERY_ID_HEADER = "KD-Delivery-Id"
USER_AGENT = "kd-webhooks/1"
ALLOW_SETTING = "KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str | tuple[str, ...], timestamp: int, body: bytes) -> str:
    """The `KD-Signature` header's value for `body` sent at `timestamp` (unix seconds): one `v1=` per
    secret (the current one first; after a rotation, the previous one too until it expires)."""
    secrets_ = (secret,) if isinstance(secret, str) else secret
    digests = [hmac.new(s.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest() for s in secrets_]
    return ",".join([f"t={timestamp}", *(f"v1={d}" for d in digests)])


def address_kind(ip: IPAddress) -> str | None:
    """Why a delivery must not go to `ip` ("loopback", "private", ...), or None when it is a globally
    routable unicast address. An IPv4 address mapped into IPv6 (::ffff:10.0.0.1) is judged as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:  # shared (100.64/10), documentation and benchmark ranges, ...
        return "non-global"
    return None


def refusal(host: str, ip: IPAddress) -> str:
    """The reason a destination is refused, naming the address and the setting that would allow it."""
    where = f"{ip} is" if ip_literal(host) is not None else f"{host} resolves to {ip},"
    return (f"refused: {where} a {address_kind(ip)} address; webhooks may only reach public addresses "
            f"unless the operator sets {ALLOW_SETTING}")


def retry_delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds from the end of attempt `attempt` (1, 2, ...) to the next: base, 2 base, 4 base, ...,
    at most `cap`."""
    return min(cap, base * 2 ** min(attempt - 1, 64))


def check_url(url: str, *, allow_private: bool) -> str | None:
    """Why `url` cannot be a webhook URL, or None when it can. Checks the URL alone (no DNS): scheme
    http or https, a host, no credentials or fragment, a valid port, at most MAX_URL_LENGTH characters;
    without `allow_private`, a host that is a non-global IP literal or a `localhost` name is refused
    (every other name is resolved, and refused the same way, on every delivery)."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if not url.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must be ASCII without spaces or control characters (percent-encode the rest, punycode the host)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "the scheme must be http or https"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not carry credentials (user:password@); verify deliveries with the signing secret instead"
    if not parts.hostname:
        return "must name a host"
    if parts.fragment or url.endswith("#"):
        return "must not have a fragment (#...): it is never sent"
    if port == 0:
        return "the port must be between 1 and 65535"
    if allow_private:
        return None
    host = parts.hostname.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return f"refused: {host} is a loopback name; webhooks may only reach public addresses unless the " \
               f"operator sets {ALLOW_SETTING}"
    ip = ip_literal(host)
    if ip is not None and address_kind(ip) is not None:
        return refusal(host, ip)
    return None


def ip_literal(host: str) -> IPAddress | None:
    """`host` as an IP address when it is one in its standard form (IPv6 without its brackets or zone),
    else None. Shorthand a resolver reads as an address (127.1, 2130706433, 0x7f.1) is not caught here
    but at delivery, where the name's resolved addresses are checked."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0] if ":" in host else host)
    except ValueError:
        return None
