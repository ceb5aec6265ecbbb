"""Delivery of alert messages over apprise: URL templates with ${SECRET} placeholders resolved at the last
moment, retries with backoff, and every error and log line scrubbed of secrets before anyone sees it."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import apprise

from alliance.errors import ConfigError
from alliance.redaction import plain_text

log = logging.getLogger("alliance.alerts")  # one logger for alerts, whichever module logs

SecretLookup = Callable[[str], str | None]

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")  # the form clinics.SECRET_PLACEHOLDER accepts
_URL_HEAD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
_HOSTNAME = re.compile(
    r"^(localhost|\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]"
    r"|([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})$"
)
# loggers of the libraries apprise drives that write URL paths or payloads at DEBUG
THIRD_PARTY_LOGGERS = ("apprise", "urllib3.connectionpool")
MIN_SECRET_LEN = 3  # shorter values would scrub ordinary words out of error text
MIN_URL_TOKEN_LEN = 8  # literal URL parts this long may be tokens (webhook ids, keys)


@dataclass(frozen=True)
class AlertMessage:
    """One message to one recipient over one or more apprise URL templates (secrets still as ${VARS})."""

    kind: Literal["rupture", "trend"]
    clinic_id: str
    recipient: str
    urls: tuple[str, ...]
    title: str
    body: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class UrlOutcome:
    """What happened on one channel: the redacted URL, success, attempts made and a secret-free error."""

    url: str
    ok: bool
    attempts: int
    error: str | None = None


@dataclass(frozen=True)
class SendResult:
    """The outcome of sending one message: one UrlOutcome per URL, in the message's order."""

    kind: str
    clinic_id: str
    recipient: str
    keys: tuple[str, ...]
    outcomes: tuple[UrlOutcome, ...]

    @property
    def ok(self) -> bool:
        """Every channel delivered."""
        return bool(self.outcomes) and all(o.ok for o in self.outcomes)

    @property
    def delivered(self) -> int:
        return sum(o.ok for o in self.outcomes)


# --- URLs and secrets ------------------------------------------------------------------------------------------


def _lookup(name: str, secret: SecretLookup | None) -> str:
    """The value of one placeholder: environment first, then the caller's secret store."""
    value = os.environ.get(name)
    if not value and secret is not None:
        try:
            value = secret(name)
        except Exception:  # a store that cannot find the name raises its own error: same as missing
            value = None
    if not value:
        raise ConfigError(f"alert URL needs ${{{name}}}: set the environment variable {name} or a secret named {name}")
    return value


_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


def _host_span(template: str) -> tuple[int, int]:
    """Where the host (after any user:password@) stands in the template, as string offsets."""
    head = _URL_HEAD.match(template)
    if head is None:
        return (0, 0)
    start, end = head.span(2)
    at = template.rfind("@", start, end)
    return (at + 1 if at >= 0 else start, end)


def _resolve(template: str, secret: SecretLookup | None) -> tuple[str, list[str]]:
    """The usable URL and the secret values put into it."""
    if "${" in PLACEHOLDER.sub("", template):
        raise ConfigError("alert URL has a malformed placeholder; write secrets as ${UPPER_CASE_NAME}")
    values: list[str] = []
    whole = PLACEHOLDER.fullmatch(template) is not None
    host_start, host_end = _host_span(template)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        value = _lookup(name, secret)
        values.append(value)
        if whole:
            return value
        if host_start <= match.start() and match.end() <= host_end:
            # a host or host:port keeps its colon; anything else there would change the URL's structure
            if not _HOST_PORT.match(value):
                raise ConfigError(f"alert URL: ${{{name}}} stands for the host, so it must be a host or host:port")
            return value
        # in credentials, path or query, '@', '/' or ':' must not change the URL's structure; apprise unquotes
        return quote(value, safe="")

    return PLACEHOLDER.sub(substitute, template), values


def resolve_url(template: str, secret: SecretLookup | None = None) -> str:
    """Replace each ``${NAME}`` with the environment variable NAME, else ``secret(NAME)``; missing → ConfigError.

    A placeholder that is the whole template (a secret webhook URL) is inserted as is, one in the host's place
    must be a host or ``host:port`` and is inserted as is; any other is percent-encoded so that its characters
    cannot change the URL's structure.

    Example: ``resolve_url("mailto://alerts:${SMTP_PW}@mail.example.org")`` with SMTP_PW=s3cret
    → ``"mailto://alerts:s3cret@mail.example.org"``.
    """
    return _resolve(template, secret)[0]


def _split_port(hostport: str) -> tuple[str, str]:
    if hostport.startswith("["):
        host, _, rest = hostport.partition("]")
        return host + "]", rest.removeprefix(":")
    host, sep, port = hostport.rpartition(":")
    return (host, port) if sep and port.isdigit() else (hostport, "")


def redact(url: str) -> str:
    """A URL safe for logs and errors: scheme and host (with port) only; a host that may be a token is masked.

    Example: ``redact("json://u:pw@hooks.example.org:8443/t/KEY?x=1") == "json://hooks.example.org:8443"``.
    """
    text = url.strip()
    if PLACEHOLDER.fullmatch(text):
        return text  # the name of a secret URL, not the URL
    head = _URL_HEAD.match(text)
    if head is None:
        return "***"
    scheme, netloc = head.groups()
    host, port = _split_port(netloc.rpartition("@")[2])
    if not (_HOSTNAME.match(host) or PLACEHOLDER.fullmatch(host)):
        return f"{scheme.lower()}://***"  # tgram://, discord://, slack:// put tokens where the host goes
    return f"{scheme.lower()}://{host}" + (f":{port}" if port else "")


def _hidden(url: str, secrets: Sequence[str]) -> list[str]:
    """Strings that must never leave send(): the secrets, the URL and its literal credentials and tokens."""
    try:
        parts = urlsplit(url)
        tokens = [parts.username or "", parts.password or "", *parts.path.split("/")]
        tokens += [v for _, v in parse_qsl(parts.query)]
    except ValueError:  # e.g. a bracketed host that is not IPv6: the secrets alone are still hidden
        tokens = []
    found = {url, *(s for s in secrets if len(s) >= MIN_SECRET_LEN)}
    found |= {quote(s, safe="") for s in secrets if len(s) >= MIN_SECRET_LEN}
    found |= {u for t in tokens if len(t) >= MIN_URL_TOKEN_LEN for u in (t, unquote(t))}
    return sorted(found, key=len, reverse=True)  # longest first: a secret inside the URL goes with the URL


def _scrub(text: str, hidden: Sequence[str]) -> str:
    for value in hidden:
        text = text.replace(value, "***")
    return text


class _Scrub(logging.Filter):
    """Rewrites third-party log records that would carry a secret of any send in progress.

    One filter, installed once and never removed: sends run side by side on threads, and a filter removed while
    another thread's record walks the logger's filters can make it skip one (``logging.Filterer.filter`` walks
    the list itself). Each send registers its secrets for as long as it runs instead."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._hidden: Counter[str] = Counter()  # a secret two sends share stays hidden until both are done

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            hidden = sorted(self._hidden, key=len, reverse=True)  # longest first, as ``_hidden`` orders them
        if hidden:
            message = record.getMessage()
            clean = _scrub(message, hidden)
            if clean != message:
                record.msg, record.args = clean, None
        return True

    @contextmanager
    def hiding(self, hidden: Sequence[str]) -> Iterator[None]:
        with self._lock:
            self._hidden.update(hidden)
        try:
            yield
        finally:
            with self._lock:
                self._hidden.subtract(hidden)
                self._hidden = +self._hidden  # secrets no send holds any more are forgotten


_SCRUB = _Scrub()
for _name in THIRD_PARTY_LOGGERS:
    logging.getLogger(_name).addFilter(_SCRUB)


def _scrubbed_logs(hidden: Sequence[str]) -> AbstractContextManager[None]:
    """While sending, apprise and urllib3 log records lose this send's secrets (they log paths at DEBUG)."""
    return _SCRUB.hiding(hidden)


def channel_id(template: str) -> str:
    """Stable id of one URL template (secrets still as ${VARS}), so deliveries are recorded per channel.

    Example: ``channel_id("mailto://smtp.example.org/lee@example.org")`` → 12 hex digits.
    """
    return hashlib.sha256(template.encode()).hexdigest()[:12]


# --- sending ---------------------------------------------------------------------------------------------------


def _client() -> apprise.Apprise:
    # result logs stay in memory: apprise would otherwise spill them to temporary files
    asset = apprise.AppriseAsset(app_id="Alliance Watch", app_desc="Alliance Watch alerts", result_log_disk_size=0)
    return apprise.Apprise(asset=asset)


def _notify_once(client: apprise.Apprise, message: AlertMessage, timeout_s: float) -> str | None:
    """One delivery attempt; None on success, else apprise's reason (may still hold secrets: scrub it)."""
    try:
        with client.notify(
            body=message.body, title=message.title, body_format=apprise.NotifyFormat.TEXT, timeout=timeout_s
        ) as result:
            if result:
                return None
            warnings = [e.message for e in result.logs() if e.level in ("WARNING", "ERROR", "CRITICAL")]
            status = getattr(result.status, "name", str(result.status)).lower()
    except Exception as exc:  # a plugin crash must not stop the other channels or the retries
        return f"apprise raised {type(exc).__name__}"
    return f"delivery failed ({status})" + (f": {'; '.join(warnings[-2:])}" if warnings else "")


def _backoff(attempt: int, backoff_s: float) -> None:
    if attempt > 1:
        time.sleep(backoff_s * 2 ** (attempt - 2))


def _deliver(
    message: AlertMessage, template: str, secret: SecretLookup | None, attempts: int, backoff_s: float, timeout_s: float
) -> UrlOutcome:
    """Send one message over one URL template, retrying with exponential backoff."""
    shown = redact(template)
    try:
        url, secrets = _resolve(template, secret)
    except ConfigError as exc:
        return UrlOutcome(shown, False, 0, str(exc))
    hidden = _hidden(url, secrets)
    error: str | None = None
    with _scrubbed_logs(hidden):
        for attempt in range(1, attempts + 1):
            _backoff(attempt, backoff_s)
            # a fresh client per attempt: a reused one adds apprise's own throttle (up to 5.5 s) to our backoff
            client = _client()
            if not client.add(url):
                return UrlOutcome(shown, False, 0, "apprise cannot use this URL (unknown scheme or missing parts)")
            error = _notify_once(client, message, timeout_s)
            if error is None:
                return UrlOutcome(shown, True, attempt)
    return UrlOutcome(shown, False, attempts, plain_text(_scrub(error or "delivery failed", hidden), 300))


def send(
    message: AlertMessage,
    secret: SecretLookup | None = None,
    attempts: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
) -> SendResult:
    """Send ``message`` to each of its URLs (placeholders resolved at the last moment); never raises on delivery.

    Example: ``send(msg, secret=lambda name: Secret.load(name.lower().replace("_", "-")).get()).ok``.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    outcomes = tuple(_deliver(message, t, secret, attempts, backoff_s, timeout_s) for t in message.urls)
    result = SendResult(message.kind, message.clinic_id, message.recipient, message.keys, outcomes)
    log.info(
        "clinic %s: %s alert (%d item(s)) to %s delivered on %d of %d channel(s)",
        message.clinic_id,
        message.kind,
        len(message.keys),
        message.recipient,
        result.delivered,
        len(outcomes),
    )
    for outcome in outcomes:
        if not outcome.ok:
            log.warning(
                "clinic %s: %s alert to %s failed on %s after %d attempt(s): %s",
                message.clinic_id,
                message.kind,
                message.recipient,
                outcome.url,
                outcome.attempts,
                outcome.error,  # secret-free: scrubbed, or the name of a missing variable
            )
    return result
