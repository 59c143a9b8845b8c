"""The reason a statement carries for its reviewers: a leading comment `/* reason: … */` or `-- reason: …`."""

from __future__ import annotations

import re

_REASON = re.compile(
    r"^\s*(?:/\*\s*reason\s*:\s*(?P<block>.*?)\s*\*/|--\s*reason\s*:\s*(?P<line>[^\n]*))",
    re.IGNORECASE | re.DOTALL,
)
MAX_REASON = 500


def statement_reason(sql: str) -> str | None:
    """The reason given in the statement's first comment, or None."""
    match = _REASON.match(sql)
    if match is None:
        return None
    reason = (match.group("block") or match.group("line") or "").strip()
    return reason[:MAX_REASON] or None
