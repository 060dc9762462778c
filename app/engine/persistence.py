"""A saved session on disk: the memory bank's directory plus ``session.json``.

``session.json`` records what the bank alone does not: which model saved it (and the KV shape it
needs), where positions and stream time stood, the stream clock of backends with a temporal
position axis, the watch rules, and which dialog file (``dialog.safetensors``, see
:mod:`app.engine.dialog_store`) holds the conversation's turns. Reopening it lets questions be
answered from the memory without the video, continuing the conversation.

Versions: 1 (no dialog, no watch rules) is still read; 2 adds ``dialog`` and ``watch_rules``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.engine.backends.types import BackendSpec, TimeAnchor
from app.engine.dialog_store import DialogRecord
from app.engine.types import SessionError

logger = logging.getLogger(__name__)

#: The file beside the bank that makes a directory a saved LiveSight memory.
SESSION_FILE = "session.json"
FORMAT = "livesight-session"
VERSION = 2


@dataclass(frozen=True)
class SavedRule:
    """A watch rule as ``session.json`` keeps it (the alerts it raised are not kept).

    Attributes:
        rule_id: the id clients know it by. text: the rule. last_alert_pts: the stream time it
        last fired (None: never), so a reopened session keeps its minimum interval between alerts.
    """

    rule_id: str
    text: str
    last_alert_pts: float | None = None


@dataclass(frozen=True)
class SavedSession:
    """The contents of ``session.json``.

    Attributes:
        session_id: the saved session's id.
        model: name of the model that saved it.
        family: that model's family.
        summary_dim: its retrieval summary length ``L * H * D``: a model that opens the memory must match.
        next_position: the first position free when it was saved.
        last_pts: the latest stream time seen (seconds).
        time_anchor: the stream clock on the temporal position axis (backends that have one).
        counters: the session's counters when saved (for the record; not restored).
        saved_at: wall time of the save (seconds since the epoch).
        dialog: the dialog file's record (None: no dialog, or a version 1 file).
        watch_rules: the session's watch rules.
    """

    session_id: str | None
    model: str | None
    family: str | None
    summary_dim: int
    next_position: int = 0
    last_pts: float = 0.0
    time_anchor: TimeAnchor | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    saved_at: float = 0.0
    dialog: DialogRecord | None = None
    watch_rules: tuple[SavedRule, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "session_id": self.session_id,
            "model": self.model,
            "family": self.family,
            "summary_dim": self.summary_dim,
            "next_position": self.next_position,
            "last_pts": self.last_pts,
            "time_anchor": None if self.time_anchor is None else asdict(self.time_anchor),
            "counters": self.counters,
            "saved_at": self.saved_at,
            "dialog": None if self.dialog is None else self.dialog.to_json(),
            "watch_rules": [asdict(rule) for rule in self.watch_rules],
        }


def is_saved_memory(directory: str | Path) -> bool:
    """Whether ``directory`` holds a saved memory (its ``session.json``)."""
    return (Path(directory) / SESSION_FILE).is_file()


def write_session_file(directory: str | Path, saved: SavedSession) -> None:
    """Write ``session.json`` into ``directory`` atomically (a reader never sees half a file)."""
    path = Path(directory)
    tmp = path / (SESSION_FILE + ".tmp")
    tmp.write_text(json.dumps(saved.to_json(), indent=2))
    tmp.replace(path / SESSION_FILE)


def read_session_file(directory: str | Path) -> SavedSession:
    """Read ``session.json`` from ``directory``.

    Raises:
        SessionError: the file is missing or unreadable.
    """
    directory = Path(directory)
    meta_path = directory / SESSION_FILE
    if not meta_path.is_file():
        raise SessionError(f"{directory} holds no saved LiveSight memory ({SESSION_FILE} is missing)")
    try:
        meta = json.loads(meta_path.read_text())
        summary_dim = int(meta["summary_dim"])
        next_position = int(meta.get("next_position", 0))
        last_pts = float(meta.get("last_pts", 0.0))
        counters = dict(meta.get("counters") or {})
        saved_at = float(meta.get("saved_at") or 0.0)
        version = int(meta.get("version", 1))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SessionError(f"{meta_path} is unreadable: {exc}") from exc
    if version > VERSION:
        logger.warning("%s is of version %d, newer than this LiveSight reads (%d): reading what it knows",
                       meta_path, version, VERSION)
    try:
        dialog = DialogRecord.from_json(meta.get("dialog"))
    except SessionError as exc:  # the memory itself is intact: reopen it without its dialog
        logger.warning("%s: %s; reopening without the dialog", meta_path, exc)
        dialog = None
    rules = _read_rules(meta.get("watch_rules"), meta_path)
    anchor = meta.get("time_anchor")
    time_anchor = None
    if isinstance(anchor, dict):
        try:
            time_anchor = TimeAnchor(float(anchor["pts"]), int(anchor["position"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionError(f"{meta_path} has an unreadable time_anchor: {exc}") from exc
    return SavedSession(
        session_id=meta.get("session_id"),
        model=meta.get("model"),
        family=meta.get("family"),
        summary_dim=summary_dim,
        next_position=next_position,
        last_pts=last_pts,
        time_anchor=time_anchor,
        counters=counters,
        saved_at=saved_at,
        dialog=dialog,
        watch_rules=rules,
    )


def _read_rules(data: object, meta_path: Path) -> tuple[SavedRule, ...]:
    """The saved watch rules; a malformed entry is skipped with a warning (the memory stays readable)."""
    if data is None:
        return ()
    if not isinstance(data, list):
        logger.warning("%s: watch_rules is not a list; reopening without watch rules", meta_path)
        return ()
    rules = []
    for entry in data:
        try:
            last = entry.get("last_alert_pts")
            rule = SavedRule(str(entry["rule_id"]), str(entry["text"]), None if last is None else float(last))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("%s: skipping a malformed watch rule %r: %r", meta_path, entry, exc)
            continue
        rules.append(rule)
    return tuple(rules)


def check_compatible(saved: SavedSession, spec: BackendSpec, directory: str | Path) -> None:
    """Refuse a model whose KV shape differs from the one that saved the memory; warn on another name.

    Raises:
        SessionError: naming the model to open it with.
    """
    if saved.summary_dim != spec.summary_dim:
        raise SessionError(
            f"{directory} was saved by model {saved.model!r} whose KV shape differs from {spec.name!r}; "
            f"open it with --model {saved.model}"
        )
    if saved.model != spec.name:
        logger.warning("memory saved by %s, opened with %s (same KV shape)", saved.model, spec.name)
