"""The webhook sender: a daemon thread in every worker process, beside the reaper and the presence beat.

Each round (every KD_WEBHOOK_POLL_SECONDS, at once again while it finds some) it claims as many due
deliveries as it has free threads (SENDS_PER_ROUND in all) in one short transaction
(jobs/webhooks_repo.py:claim_due), makes each attempt in one of those threads holding no database
connection, and records its outcome in a transaction of its own; a round does not wait for its attempts,
and one tenant's deliveries have at most SENDS_PER_TENANT of the threads at once (its slow receivers
cannot take them all). A job never waits for it: the job's transaction only inserted the rows.

One attempt:
1. resolve the URL's host (every attempt: a name may move);
2. unless KD_WEBHOOK_ALLOW_PRIVATE_NETWORKS, refuse when any address it resolves to is not a globally
   routable unicast address (jobs/webhooks.py:address_kind), recording why;
3. connect to the checked address itself (the URL's host is sent as Host and, for https, as the TLS
   server name the certificate must match), so a second DNS answer cannot swap in another address
   between the check and the connection; no proxy from the environment, no redirect followed;
4. POST the body with `KD-Signature`, `KD-Event-Id`, `KD-Event-Type`, `KD-Delivery-Id`; a 2xx within
   KD_WEBHOOK_TIMEOUT_SECONDS (per connect and per read) succeeds; the response body is never read.
   The whole attempt ends after ATTEMPT_TIMEOUTS × KD_WEBHOOK_TIMEOUT_SECONDS however the receiver
   trickles its answer: a watchdog shuts the connection's socket down, which wakes the blocked read.
   Without it, one receiver sending a header byte every few seconds held its thread, and the round
   that waits for every attempt, for as long as it liked: every other tenant's deliveries on that
   worker waited with it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from jobs import webhooks_repo
from jobs.tables import utcnow
from jobs.webhooks import (DELIVERY_ID_HEADER, EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, USER_AGENT,
                           IPAddress, address_kind, refusal, sign)
from worker.context import WorkerContext

log = logging.getLogger("worker.webhooks")
SENDS_PER_ROUND = 8  # sender threads: deliveries attempted at once
SENDS_PER_TENANT = 4  # of those, at most this many for one tenant's deliveries (the rest wait their turn)
# A claim keeps its row from other senders for this many times KD_WEBHOOK_TIMEOUT_SECONDS (httpx bounds
# the connect, the write and each read by it), plus webhooks_repo.CLAIM_MARGIN_SECONDS.
CLAIM_TIMEOUTS = 4
# An attempt's whole duration, connect to status line, is at most this many KD_WEBHOOK_TIMEOUT_SECONDS
# (below CLAIM_TIMEOUTS, so a claim never runs out under an attempt that is still going).
ATTEMPT_TIMEOUTS = 3
PURGE_INTERVAL_SECONDS = 3600  # how often finished deliveries past their retention are deleted
PURGE_BATCH = 1000  # rows per delete statement


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order (OSError when it does not resolve)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))


class _Watchdog:
    """Ends an attempt after `seconds` in all: it learns the connection's socket from httpcore's trace
    and, past the deadline, shuts it down (a read blocked on it returns at once and httpx raises)."""

    def __init__(self, seconds: float):
        self.seconds, self.expired = seconds, False
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            with self.lock:
                self.sock = info["return_value"].get_extra_info("socket")
                if self.expired:  # connected just as the deadline passed
                    self._shutdown()

    def _expire(self) -> None:
        with self.lock:
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed: the attempt ended on its own
                pass

    def __enter__(self) -> "_Watchdog":
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()


class WebhookSender:
    def __init__(self, ctx: WorkerContext, *, resolver: Callable[[str, int], list[IPAddress]] = resolve):
        self.cfg, self.sessions, self.resolver = ctx.cfg, ctx.sessions, resolver
        self.ssl_context = ssl.create_default_context()  # made once: loading the CA bundle costs ~20 ms
        self.pool = ThreadPoolExecutor(SENDS_PER_ROUND, thread_name_prefix="webhook")
        self.free = threading.Semaphore(SENDS_PER_ROUND)  # sender threads not in an attempt
        self.in_flight: dict[str, int] = {}  # tenant id -> its attempts under way in this process
        self.in_flight_lock = threading.Lock()

    def run_once(self, *, wait: bool = True) -> int:
        """One round: claim as many due deliveries as there are free sender threads, attempt each in
        one, record each outcome; the number claimed. `wait` returns once all are recorded; the
        sender's own loop does not wait, so a slow receiver keeps its own thread busy (up to
        ATTEMPT_TIMEOUTS × KD_WEBHOOK_TIMEOUT_SECONDS) and no one else's delivery waits for it."""
        slots = 0
        while slots < SENDS_PER_ROUND and self.free.acquire(blocking=False):
            slots += 1
        if not slots:
            return 0
        cfg = self.cfg
        with self.in_flight_lock:
            in_flight = dict(self.in_flight)
        try:
            with self.sessions() as s:
                claimed = webhooks_repo.claim_due(s, now=utcnow(), limit=slots,
                                                  attempt_seconds=cfg.webhook_timeout_seconds * CLAIM_TIMEOUTS,
                                                  max_attempts=cfg.webhook_max_attempts,
                                                  per_tenant=SENDS_PER_TENANT, in_flight=in_flight)
                s.commit()
        except BaseException:
            for _ in range(slots):
                self.free.release()
            raise
        for _ in range(slots - len(claimed)):
            self.free.release()
        with self.in_flight_lock:
            for c in claimed:
                self.in_flight[c.tenant_id] = self.in_flight.get(c.tenant_id, 0) + 1
        futures = [self.pool.submit(self._deliver_in_slot, c) for c in claimed]
        if wait:
            for future in futures:
                future.result()
        return len(claimed)

    def _deliver_in_slot(self, claimed: webhooks_repo.Claimed) -> None:
        try:
            self._deliver(claimed)
        except Exception:  # the database is away: the claim runs out and the delivery is attempted again
            log.exception("webhook delivery %s: could not record its attempt", claimed.delivery_id)
        finally:
            with self.in_flight_lock:
                left = self.in_flight.pop(claimed.tenant_id, 1) - 1
                if left:
                    self.in_flight[claimed.tenant_id] = left
            self.free.release()

    def _deliver(self, claimed: webhooks_repo.Claimed) -> None:
        outcome, ok = self.attempt(claimed)
        cfg = self.cfg
        with self.sessions() as s:
            status = webhooks_repo.record_attempt(
                s, delivery_id=claimed.delivery_id, attempt=claimed.attempt, outcome=outcome, ok=ok, now=utcnow(),
                max_attempts=cfg.webhook_max_attempts, retry_base=cfg.webhook_retry_base_seconds,
                retry_max=cfg.webhook_retry_max_seconds)
            s.commit()
        log.info("webhook delivery %s (%s) attempt %d: %s -> %s", claimed.delivery_id, claimed.event_type,
                 claimed.attempt, outcome.get("status_code") or outcome.get("error"), status or "taken over")

    def attempt(self, claimed: webhooks_repo.Claimed) -> tuple[dict[str, Any], bool]:
        """Make one attempt; its outcome as recorded, and whether it succeeded (a 2xx)."""
        started, clock = utcnow(), time.monotonic()
        outcome: dict[str, Any] = {"started_at": started.isoformat().replace("+00:00", "Z"), "address": None,
                                   "status_code": None, "error": None}

        def done(ok: bool = False, **values: Any) -> tuple[dict[str, Any], bool]:
            outcome.update(values, duration_ms=round((time.monotonic() - clock) * 1000))
            return outcome, ok

        parts = urlsplit(claimed.url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme.lower() == "https" else 80)
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError, ValueError) as exc:
            return done(error=f"could not resolve {host}: {getattr(exc, 'strerror', None) or exc}")
        if not addresses:
            return done(error=f"could not resolve {host}: no address")
        if not self.cfg.webhook_allow_private_networks:
            for ip in addresses:
                if address_kind(ip) is not None:
                    return done(error=refusal(host, ip), address=str(ip))
        ip = addresses[0]
        outcome["address"] = str(ip)
        body = claimed.body.encode()
        headers = {"Host": parts.netloc, "Content-Type": "application/json", "User-Agent": USER_AGENT,
                   SIGNATURE_HEADER: sign(claimed.secrets, int(time.time()), body),
                   EVENT_ID_HEADER: claimed.event_id, EVENT_TYPE_HEADER: claimed.event_type,
                   DELIVERY_ID_HEADER: claimed.delivery_id}
        target = httpx.URL(claimed.url).copy_with(host=str(ip))
        timeout = self.cfg.webhook_timeout_seconds
        watchdog = _Watchdog(timeout * ATTEMPT_TIMEOUTS)
        extensions: dict[str, Any] = {"trace": watchdog.trace}
        if parts.scheme.lower() == "https":
            extensions["sni_hostname"] = host
        try:
            with watchdog, httpx.Client(verify=self.ssl_context, trust_env=False, follow_redirects=False,
                                        timeout=timeout) as client:
                with client.stream("POST", target, content=body, headers=headers, extensions=extensions) as resp:
                    code = resp.status_code
        except httpx.HTTPError as exc:
            if watchdog.expired:
                return done(error=f"no complete answer from {ip} within {watchdog.seconds:g} s ({ATTEMPT_TIMEOUTS} × "
                                  "KD_WEBHOOK_TIMEOUT_SECONDS, an attempt's whole time)")
            if isinstance(exc, httpx.TimeoutException):
                return done(error=f"no answer from {ip} within {timeout:g} s (KD_WEBHOOK_TIMEOUT_SECONDS)")
            return done(error=f"could not post to {ip} port {port}: {exc or type(exc).__name__}")
        if 200 <= code < 300:
            return done(ok=True, status_code=code)
        reason = "; redirects are not followed" if 300 <= code < 400 else ""
        return done(status_code=code, error=f"the receiver answered {code}{reason}")

    def purge(self) -> int:
        """Delete the deliveries that finished more than KD_WEBHOOK_DELIVERY_RETENTION_SECONDS ago; how many."""
        before = utcnow() - timedelta(seconds=self.cfg.webhook_delivery_retention_seconds)
        total = 0
        while True:
            with self.sessions() as s:
                deleted = webhooks_repo.purge_finished(s, before=before, batch=PURGE_BATCH)
                s.commit()
            total += deleted
            if deleted < PURGE_BATCH:
                return total

    def start(self) -> threading.Event:
        """Run rounds in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()

        def loop() -> None:
            purged_at = None
            while not stop.wait(self.cfg.webhook_poll_seconds):
                try:
                    if purged_at is None or time.monotonic() - purged_at > PURGE_INTERVAL_SECONDS:
                        purged_at = time.monotonic()
                        if purged := self.purge():
                            log.info("deleted %d webhook deliveries past KD_WEBHOOK_DELIVERY_RETENTION_SECONDS", purged)
                    while self.run_once(wait=False) and not stop.is_set():
                        pass  # claimed some: more may be due while threads are free
                except Exception:  # the database is away: try again next round
                    log.exception("webhook round failed")

        threading.Thread(target=loop, name="webhook-sender", daemon=True).start()
        return stop
