"""The one place secrets are masked: every output stream, every log line and every stored error passes here.

Two rules, applied together:
- every registered secret (API token, each source's credential, the store's password) is replaced,
  also, when 16 characters or more, echoed back in another case or percent-encoded (`TD-SECRET`);
- the password of any URL (`scheme://user:PASSWORD@host`) is replaced, registered or not, so a
  DSN that reaches a message before its owner registered it still does not leak.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

MASK = "***"
VARIANTS_FROM = 16  # characters: API tokens are longer; a short password is matched only as written
_SECRETS: set[str] = set()
_SECRET_FORMS: list[re.Pattern[str]] = []  # one pattern: every registered secret, in any case or percent-encoding
_LOCK = threading.Lock()
# scheme://user:password@  (user may be empty: redis://:pw@host); the password runs to the last '@' of the netloc
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*:)(?P<pw>[^\s/'\"]*)(?P<at>@)")


def register_secret(value: str | None) -> None:
    """Mask this value from now on, wherever it would appear; a URL's password is registered too."""
    if not value:
        return
    with _LOCK:
        if len(value) >= 4:
            _SECRETS.add(value)
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password and len(password) >= 4:
                _SECRETS.add(password)
        longest_first = sorted(_SECRETS, key=len, reverse=True)  # a URL before its password
        if longest_first:  # an empty pattern would match between every two characters
            _SECRET_FORMS[:] = [re.compile("|".join(_any_form(s) for s in longest_first), re.IGNORECASE)]


def _any_form(secret: str) -> str:
    """A pattern for `secret` with each character as itself or percent-encoded, in either case; a
    secret shorter than VARIANTS_FROM only as itself (a password `postgres` would mask `PostgreSQL`)."""
    if len(secret) < VARIANTS_FROM:
        return "(?-i:" + re.escape(secret) + ")"
    parts = []
    for char in secret:
        forms = {re.escape(char)}
        if char.isascii():
            forms |= {f"%{ord(variant):02x}" for variant in (char.lower(), char.upper())}
        parts.append(f"(?:{'|'.join(sorted(forms))})" if len(forms) > 1 else re.escape(char))
    return "".join(parts)


def mask_secrets(text: str) -> str:
    """The text with every known secret and every URL password replaced by ***."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text)
    with _LOCK:
        forms = _SECRET_FORMS[0] if _SECRET_FORMS else None
    return forms.sub(MASK, text) if forms is not None else text


def mask_url(url: str) -> str:
    """A URL fit to print: its password replaced."""
    return mask_secrets(url)


def _walk(value: Any) -> Iterable[str]:
    """Every credential inside a settings value: SecretStr, Secret values, URL passwords."""
    from autoscaler.signals.base import Secret

    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, Secret):
        yield from value.peek()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, str) and "://" in value:
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            yield password


def register_settings_secrets(settings: BaseModel, extra: Iterable[BaseModel] = ()) -> None:
    """Register every credential a configuration holds, before anything can print it.

    `extra` takes validated source options (the raw settings keep them as plain dicts).
    """
    for model in (settings, *extra):
        for text in _walk(model):
            register_secret(text)


class MaskingStream(io.TextIOBase):
    """A text stream that masks secrets and writes whole lines only, each in one write.

    Each thread gathers its partial line apart, so two threads (structlog and the standard
    library's handler, the scheduler's workers) never glue two events onto one line.
    """

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self.target = target
        self._local = threading.local()
        self._write_lock = threading.Lock()

    def _pending(self) -> list[str]:
        pending: list[str] | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending

    def write(self, text: str) -> int:
        pending = self._pending()
        pending.append(text)
        if "\n" not in text:
            return len(text)
        joined = "".join(pending)
        complete, _, rest = joined.rpartition("\n")
        pending.clear()
        if rest:
            pending.append(rest)
        with self._write_lock:
            self.target.write(mask_secrets(complete + "\n"))
            self.target.flush()
        return len(text)

    def flush(self) -> None:
        pending = self._pending()
        if pending:
            joined = "".join(pending)
            pending.clear()
            with self._write_lock:
                self.target.write(mask_secrets(joined))
        with self._write_lock:
            self.target.flush()

    def isatty(self) -> bool:
        return bool(self.target.isatty())

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


def masked(stream: TextIO) -> TextIO:
    """Wrap a stream once: wrapping a MaskingStream again returns it unchanged."""
    if isinstance(stream, MaskingStream):
        return stream
    return MaskingStream(stream)  # type: ignore[return-value]
