"""Watch rules: standing yes/no questions about the stream, and the alerts they raise.

A rule is checked with a short yes/no generation over the sink and the local window only (the
latest frames), leaving no trace in the conversation. A rule that fired is not checked again until
a minimum interval of stream time has passed.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Sequence

from app.engine.types import Alert, SessionError, WatchRule

#: Longest rule text, in characters.
MAX_RULE_CHARS = 500
#: Rules one session holds at most.
MAX_RULES = 32
#: Alerts a session remembers (the oldest are forgotten first).
MAX_ALERTS = 1000
#: Tokens generated to answer a rule: enough for "yes" or "no".
ANSWER_TOKENS = 3


def rule_text(rule: str) -> str:
    """The text of a new rule, checked: non-empty and at most :data:`MAX_RULE_CHARS` characters."""
    if not isinstance(rule, str) or not rule.strip():
        raise SessionError("a watch rule needs non-empty text")
    if len(rule) > MAX_RULE_CHARS:
        raise SessionError(f"a watch rule is limited to {MAX_RULE_CHARS} characters, got {len(rule)}")
    return rule.strip()


def rule_prompt(rule: WatchRule) -> str:
    """The question the model answers for ``rule``."""
    return f"Answer only yes or no. Looking at the latest frames: {rule.text}"


class WatchRules:
    """A session's watch rules and the alerts they raised. Not thread-safe: the session locks."""

    def __init__(self) -> None:
        self._rules: dict[str, WatchRule] = {}
        self._last_alert: dict[str, float] = {}
        self._alerts: deque[Alert] = deque(maxlen=MAX_ALERTS)

    def __len__(self) -> int:
        return len(self._rules)

    def add(self, text: str) -> WatchRule:
        """Register a rule (``text`` as :func:`rule_text` returns it)."""
        if len(self._rules) >= MAX_RULES:
            raise SessionError(f"a session holds at most {MAX_RULES} watch rules")
        r = WatchRule(uuid.uuid4().hex[:8], text)
        self._rules[r.rule_id] = r
        return r

    def restore(self, rule_id: str, text: str, last_alert_pts: float | None = None) -> WatchRule:
        """Reinstall a rule saved with a memory under its own id (clients still know it by that id);
        ``last_alert_pts`` keeps its minimum interval between alerts across the reopen."""
        if len(self._rules) >= MAX_RULES:
            raise SessionError(f"a session holds at most {MAX_RULES} watch rules")
        r = WatchRule(rule_id, rule_text(text))
        self._rules[r.rule_id] = r
        if last_alert_pts is not None:
            self._last_alert[r.rule_id] = float(last_alert_pts)
        return r

    def last_alert(self, rule_id: str) -> float | None:
        """Stream time rule ``rule_id`` last fired (None: never)."""
        return self._last_alert.get(rule_id)

    def remove(self, rule_id: str) -> bool:
        """Forget a rule; ``False`` when there was none with that id."""
        self._last_alert.pop(rule_id, None)
        return self._rules.pop(rule_id, None) is not None

    def rules(self) -> list[WatchRule]:
        return list(self._rules.values())

    def alerts(self) -> list[Alert]:
        """Alerts raised so far, oldest first (the last :data:`MAX_ALERTS`)."""
        return list(self._alerts)

    def check(self, backend, context: Sequence, start: int, pts: float, min_interval_s: float) -> list[Alert]:
        """Ask the model every rule that may fire at stream time ``pts``; -> the alerts raised.

        Args:
            backend: the :class:`~app.engine.backends.base.VideoLLM`.
            context: the KV segments to answer over (the sink and the local window).
            start: the first free position (where the rule's question is laid out).
            pts: stream time now (seconds).
            min_interval_s: rules that fired less than this long ago (stream time) are skipped.
        """
        alerts: list[Alert] = []
        for rule in list(self._rules.values()):
            last = self._last_alert.get(rule.rule_id)
            if last is not None and pts - last < min_interval_s:
                continue
            qseg = backend.question_segment(rule_prompt(rule), start, first=True)
            answer = "".join(item for item in backend.generate(qseg, context, max_new_tokens=ANSWER_TOKENS)
                             if isinstance(item, str))
            if answer.strip().lower().startswith("yes"):
                self._last_alert[rule.rule_id] = pts
                alert = Alert(rule.rule_id, rule.text, pts, answer.strip(), time.time())
                self._alerts.append(alert)
                alerts.append(alert)
        return alerts
