"""API keys: where they come from, how a caller is recognised, and how keys rotate without a restart.

Keys come from ``TANDEM_API__KEYS`` and from ``TANDEM_API__KEYS_FILE`` (one a line, ``key`` or
``name:key``, ``#`` comments), which is re-read when it changes (checked at most every
``keys_reload_s`` on the ring's clock): add the new key, let clients switch, remove the old one.

A caller is known by a stable id that is never the key: the key's name, or ``key-`` and the first
12 hex digits of its SHA-256. Two keys under one name are one caller (rotation keeps its sessions
and its rate bucket). Only digests are kept, and every one of them is compared, in constant time,
against the digest of the key a request presents.

Example:
    >>> ring = KeyRing(["platform:s3cret", "other"])
    >>> ring.identify("s3cret")
    'platform'
    >>> ring.identify("wrong") is None
    True
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from api.settings import ApiSettings

__all__ = ["KeyRing", "caller_id", "parse_keys"]

log = logging.getLogger("tandem.api.keys")

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def caller_id(key: str) -> str:
    """The non-secret id of an unnamed key: short enough to reveal nothing useful, long enough not to collide."""
    return "key-" + _digest(key).hex()[:12]


@dataclass(frozen=True)
class _Entry:
    caller: str
    digest: bytes


def parse_keys(lines: Iterable[str]) -> list[tuple[str, str]]:
    """``(caller id, key)`` for each ``key`` or ``name:key`` line; blank lines and ``#`` comments are skipped.

    A line is ``name:key`` only when the part before the first ``:`` is a plain name (letters, digits, ``._-``);
    otherwise the whole line is the key.
    """
    out = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        if sep and rest.strip() and _NAME.match(name.strip()):
            out.append((name.strip(), rest.strip()))
        else:
            out.append((caller_id(line), line))
    return out


class KeyRing:
    """The accepted keys and whose each is; the keys file is re-read when it changes.

    Example:
        >>> ring = KeyRing(keys_file=Path("/etc/tandem/keys"), reload_s=5.0)  # doctest: +SKIP
        >>> ring.identify(request_key)  # doctest: +SKIP
        'platform'
    """

    def __init__(
        self,
        keys: Iterable[str] = (),
        *,
        keys_file: Path | None = None,
        reload_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = [_Entry(caller, _digest(key)) for caller, key in parse_keys(keys)]
        self.keys_file = keys_file
        self.reload_s = reload_s
        self._clock = clock  # injectable: tests move time to the next check instead of sleeping
        self._from_file: list[_Entry] = []
        self._signature: tuple[int, int, int] | None = None
        self._checked_at: float | None = None
        self._refresh()

    @classmethod
    def from_settings(cls, api: ApiSettings, *, clock: Callable[[], float] = time.monotonic) -> KeyRing:
        return cls(
            [k.get_secret_value() for k in api.keys], keys_file=api.keys_file, reload_s=api.keys_reload_s, clock=clock
        )

    @property
    def configured(self) -> bool:
        """Whether callers need a key; a configured but empty keys file still means yes (everyone is refused)."""
        return bool(self._static) or self.keys_file is not None

    @property
    def callers(self) -> list[str]:
        """The ids of the callers whose keys are accepted now."""
        return sorted({e.caller for e in (*self._static, *self._from_file)})

    def identify(self, key: str | None) -> str | None:
        """The caller id of ``key``, or ``None`` when it is missing or not accepted."""
        self._refresh()
        if not key:
            return None
        given = _digest(key)
        found: str | None = None
        # Every key is compared (no early exit), on fixed-length digests, so timing tells neither which key
        # matched nor how long the keys are.
        for entry in (*self._static, *self._from_file):
            if hmac.compare_digest(given, entry.digest):
                found = entry.caller
        return found

    def _refresh(self) -> None:
        if self.keys_file is None:
            return
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self.reload_s:
            return
        self._checked_at = now
        try:
            st = os.stat(self.keys_file)
        except OSError as exc:
            if self._signature != (0, 0, 0):
                # Fail closed: a removed file revokes its keys.
                log.warning("keys file %s cannot be read (%s): its keys are not accepted", self.keys_file,
                            type(exc).__name__)  # fmt: skip
            self._from_file, self._signature = [], (0, 0, 0)
            return
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return
        try:
            text = self.keys_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("keys file %s cannot be read (%s): its keys are not accepted", self.keys_file,
                        type(exc).__name__)  # fmt: skip
            self._from_file, self._signature = [], signature
            return
        self._from_file = [_Entry(caller, _digest(key)) for caller, key in parse_keys(text.splitlines())]
        self._signature = signature
        log.info("keys file %s read: %d keys, callers %s", self.keys_file, len(self._from_file),
                 sorted({e.caller for e in self._from_file}))  # fmt: skip
