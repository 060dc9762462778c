"""A saved memory keeps its conversation: the dialog's KV (exactly), the watch rules (same ids) and
the stream clock come back with ``Session.open_memory``; a damaged dialog file costs the dialog
only, and memories saved before dialogs were kept still reopen."""

from __future__ import annotations

import json
import logging
import time

import torch

from app.engine.config import SessionConfig
from app.engine.dialog_store import DIALOG_FILE
from app.engine.persistence import SESSION_FILE
from app.engine.session import Session
from streaming.frame import Frame
from tests import media

QUESTION = "What happened just before?"


def _two_turns(session: Session) -> None:
    session.answer("What do you see?", max_new_tokens=3)
    session.answer("And what colour is it?", max_new_tokens=3)


def test_question_logits_after_reopen_equal_those_before_save(tiny_backend, tmp_path):
    # vision off: frames move the clock but add no tokens, so the context a question attends to is
    # the sink and the dialog alone, before the save and after the reopen: the logits must be equal
    cfg = SessionConfig(vision=False, memory_dir=str(tmp_path / "m"), persist=True, top_k=0)
    with Session(tiny_backend, cfg) as s:
        for i, rgb in enumerate(media.moving_square(3)):
            s.ingest(Frame(i, float(i), time.time(), rgb))
        _two_turns(s)
        assert len(s._dialog) == 2
        before, _ = s.question_logits(QUESTION)
        next_position = s.stats()["next_position"]
        s.save()
    with Session.open_memory(tiny_backend, tmp_path / "m", SessionConfig(vision=False, top_k=0)) as s2:
        assert s2.stats()["dialog_tokens"] > 0 and s2.stats()["next_position"] == next_position
        assert s2.stats()["stream_time_s"] == 2.0
        after, _ = s2.question_logits(QUESTION)
    assert torch.equal(after, before)
    # without its dialog the same question reads differently: the turns are what made them equal
    (tmp_path / "m" / DIALOG_FILE).unlink()
    with Session.open_memory(tiny_backend, tmp_path / "m", SessionConfig(vision=False, top_k=0)) as s3:
        assert s3.stats()["dialog_tokens"] == 0
        alone, _ = s3.question_logits(QUESTION)
    assert alone.shape[-1] == before.shape[-1] and not torch.equal(alone[-1], before[-1])


def test_dialog_and_watch_rules_survive_with_the_memory(tiny_backend, tmp_path, caplog):
    cfg = SessionConfig(window_tokens=64, memory_dir=str(tmp_path / "m"), persist=True, max_new_tokens=3)
    with Session(tiny_backend, cfg) as s:
        for i, rgb in enumerate(media.moving_square(6)):
            s.ingest(Frame(i, float(i), time.time(), rgb))
        rule = s.watch("is there a red square?")
        s._watches._last_alert[rule.rule_id] = 4.0  # as if it fired at 4 s (the tiny model answers at random)
        _two_turns(s)
        turns = [(t.keys.clone(), t.values.clone(), t.positions.clone()) for t in s._dialog]
        s.save()
        chunks = len(s.bank)
        # a save that did not change the dialog keeps its file (tens of MB for a long dialog)
        written = (tmp_path / "m" / DIALOG_FILE).stat().st_mtime_ns
        s.ingest(Frame(6, 6.0, time.time(), next(media.moving_square(1))))
        s.save()
        assert (tmp_path / "m" / DIALOG_FILE).stat().st_mtime_ns == written
        chunks = len(s.bank)
    meta = json.loads((tmp_path / "m" / SESSION_FILE).read_text())
    assert meta["version"] == 2 and meta["dialog"]["turns"] == 2
    with Session.open_memory(tiny_backend, tmp_path / "m") as s2:
        assert len(s2.bank) == chunks
        assert [(r.rule_id, r.text) for r in s2.rules()] == [(rule.rule_id, rule.text)]
        assert s2._watches.last_alert(rule.rule_id) == 4.0
        assert len(s2._dialog) == 2
        for (k, v, p), turn in zip(turns, s2._dialog):
            assert torch.equal(turn.keys, k) and torch.equal(turn.values, v) and torch.equal(turn.positions, p)
        s2.answer(QUESTION, max_new_tokens=2)  # the conversation goes on: a third turn
        assert len(s2._dialog) == 3
        assert s2.unwatch(rule.rule_id)  # clients still know the rule by its id

    # a reopen with a smaller dialog budget keeps the newest turns only
    small = sum(t[0].shape[2] for t in turns[1:])
    with Session.open_memory(tiny_backend, tmp_path / "m", SessionConfig(dialog_max_tokens=small)) as s3:
        assert len(s3._dialog) == 1 and torch.equal(s3._dialog[0].keys, turns[1][0])

    # a damaged dialog file: a warning, and the memory reopens without its dialog
    data = bytearray((tmp_path / "m" / DIALOG_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "m" / DIALOG_FILE).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="app.engine.session"):
        with Session.open_memory(tiny_backend, tmp_path / "m") as s4:
            assert len(s4.bank) == chunks and len(s4._dialog) == 0 and len(s4.rules()) == 1
            assert s4.answer(QUESTION, max_new_tokens=2).text is not None
            s4.save()  # the next save replaces the damaged file with the dialog it has now
    assert any("reopening without the dialog" in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)
    with Session.open_memory(tiny_backend, tmp_path / "m") as s5:
        assert len(s5._dialog) == 1


def test_memory_saved_before_dialogs_were_kept_still_reopens(tiny_backend, tmp_path):
    cfg = SessionConfig(window_tokens=64, memory_dir=str(tmp_path / "m"), persist=True, max_new_tokens=3)
    with Session(tiny_backend, cfg) as s:
        for i, rgb in enumerate(media.moving_square(4)):
            s.ingest(Frame(i, float(i), time.time(), rgb))
        _two_turns(s)
        s.save()
        chunks = len(s.bank)
    # what a version 1 save wrote: no dialog record, no watch rules, no dialog file
    path = tmp_path / "m" / SESSION_FILE
    meta = json.loads(path.read_text())
    for name in ("dialog", "watch_rules"):
        meta.pop(name)
    meta["version"] = 1
    path.write_text(json.dumps(meta))
    (tmp_path / "m" / DIALOG_FILE).unlink()
    with Session.open_memory(tiny_backend, tmp_path / "m") as s2:
        assert len(s2.bank) == chunks and len(s2._dialog) == 0 and s2.rules() == []
        assert s2.stats()["next_position"] == meta["next_position"]
        # the next save writes version 2 with the new dialog
        s2.answer(QUESTION, max_new_tokens=2)
        s2.save()
    assert json.loads(path.read_text())["dialog"]["turns"] == 1
