"""Rejections: messages a peer refused as untrusted input, counted by reason.

A well-formed message can still be one this peer must not act on: AppendEntries from a sender
that is not a member, a vote response from a stranger, a proposal too large to replicate. Each
is refused, counted here (and reported in `status`), and logged once per (reason, source) so a
hostile or confused sender cannot flood the log. Not thread-safe: one actor owns it.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

MAX_LOGGED = 1024  # (reason, source) pairs remembered for log-once; the table resets when full


class Rejections:
    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.counts: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()

    def refuse(self, reason: str, source: str, detail: str = "") -> None:
        """Count one refused message; log it if this source has not been logged for it yet."""
        self.counts[reason] += 1
        key = (reason, source[:128])
        if key in self._logged:
            return
        if len(self._logged) >= MAX_LOGGED:
            self._logged.clear()
        self._logged.add(key)
        log.warning(
            "%s: refused %s from %r%s (logged once per source)",
            self.peer_id,
            reason.replace("_", " "),
            source[:128],
            f": {detail}" if detail else "",
        )

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
