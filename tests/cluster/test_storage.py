"""The shared memory root without Ray: epochs, refused zombie writes, fsspec sync, and keyed sessions
moving between two managers (two "replicas" in one process sharing one root)."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from app.engine.config import ConfigError, SessionConfig
from app.serving.cluster.errors import BadSessionKey, ClusterConfigError, StaleEpoch, StorageError
from app.serving.cluster.manager import ClusterSessionManager
from app.serving.cluster.storage import MemoryRoot
from app.serving.errors import LiveUpdateRefused
from app.serving.limits import ManagerConfig
from tests.cluster.conftest import feed


def fake_save(directory, chunks: dict[str, bytes], tag: str):
    """A save function writing a memory-shaped directory: chunk files, small files, the manifest last."""

    def save() -> None:
        (directory / "chunks").mkdir(parents=True, exist_ok=True)
        records = []
        for name, data in chunks.items():
            (directory / "chunks" / name).write_bytes(data)
            import hashlib

            records.append({"file": f"chunks/{name}", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
        (directory / "session.json").write_text(json.dumps({"tag": tag}))
        (directory / "manifest.json").write_text(json.dumps({"chunks": records, "tag": tag}))

    return save


@pytest.fixture(params=["posix", "memory"])
def root(request, tmp_path):
    if request.param == "posix":
        return MemoryRoot(str(tmp_path / "root"))
    return MemoryRoot(f"memory://livesight-test-{uuid.uuid4().hex[:8]}", cache_dir=str(tmp_path / "cache"))


def read_manifest(root: MemoryRoot, key: str, epoch: int) -> dict:
    path = f"{root.epoch_dir(key, epoch)}/manifest.json"
    if root.remote:
        return json.loads(root._fs.cat_file(path))
    with open(path) as fh:
        return json.load(fh)


def test_take_over_copies_memory_and_refuses_the_old_owner(root):
    a = root.claim("cam1", owner="replica-a")
    assert (a.epoch, a.restored_from) == (1, None)
    root.commit(a, fake_save(a.local_dir, {"000000000000.kvc": b"one"}, "a1"))
    b = root.claim("cam1", owner="replica-b")
    assert (b.epoch, b.restored_from) == (2, 1)
    assert (b.local_dir / "chunks" / "000000000000.kvc").read_bytes() == b"one"
    assert json.loads((b.local_dir / "manifest.json").read_text())["tag"] == "a1"
    # the zombie: replica a still believes it owns cam1 and saves again
    with pytest.raises(StaleEpoch) as info:
        root.commit(a, fake_save(a.local_dir, {"000000000001.kvc": b"zombie"}, "zombie"))
    assert info.value.code == "session_moved" and info.value.current == 2
    root.commit(b, fake_save(b.local_dir, {"000000000000.kvc": b"one", "000000000001.kvc": b"two"}, "b1"))
    assert read_manifest(root, "cam1", 2)["tag"] == "b1"
    assert root.committed_epochs("cam1") == [2]  # epoch 1's directory is gone once 2 is committed
    c = root.claim("cam1", owner="replica-c")
    assert c.restored_from == 2
    assert (c.local_dir / "chunks" / "000000000001.kvc").read_bytes() == b"two"


def test_zombie_check_happens_before_the_commit_point(root):
    """A take-over between the zombie's save and its manifest leaves the zombie's manifest unwritten."""
    a = root.claim("cam2", owner="a")
    root.commit(a, fake_save(a.local_dir, {"000000000000.kvc": b"x"}, "a1"))
    holder = {}

    def save_then_lose():
        fake_save(a.local_dir, {"000000000000.kvc": b"x", "000000000001.kvc": b"y"}, "a2")()
        holder["b"] = root.claim("cam2", owner="b")  # taken over while a was saving

    with pytest.raises(StaleEpoch):
        root.commit(a, save_then_lose)
    assert holder["b"].restored_from == 1
    assert read_manifest(root, "cam2", 1)["tag"] in ("a1", "a2")  # POSIX wrote in place; a URL root kept a1
    if root.remote:
        assert read_manifest(root, "cam2", 1)["tag"] == "a1"


def test_remove_deletes_a_session_only_for_its_current_owner(root):
    """A closed page tab's session is deleted from the root; an older owner's removal deletes nothing."""
    a = root.claim("page-x", owner="a")
    root.commit(a, fake_save(a.local_dir, {"000000000000.kvc": b"x"}, "a1"))
    b = root.claim("page-x", owner="b")
    assert not root.remove(a)  # a lost the session: b's memory stays
    assert root.epochs("page-x") == [1, 2] and 1 in root.committed_epochs("page-x")
    root.commit(b, fake_save(b.local_dir, {"000000000000.kvc": b"x"}, "b1"))
    assert root.remove(b)
    assert root.epochs("page-x") == [] and root.committed_epochs("page-x") == []
    fresh = root.claim("page-x", owner="c")  # the key is free again: a new, empty session
    assert (fresh.epoch, fresh.restored_from) == (1, None)


def test_url_root_fetches_through_the_read_cache(tmp_path):
    root = MemoryRoot(f"memory://livesight-cache-{uuid.uuid4().hex[:8]}", cache_dir=str(tmp_path / "cache"),
                      fetch_threads=4)
    a = root.claim("cam3", owner="a")
    chunks = {f"{i:012d}.kvc": bytes([i]) * 100 for i in range(12)}
    root.commit(a, fake_save(a.local_dir, chunks, "a"))
    assert len(a.uploaded) == 12
    objects = tmp_path / "cache" / "objects"
    b = root.claim("cam3", owner="b")
    assert len(list(objects.iterdir())) == 12
    stamp = {p.name: p.stat().st_mtime_ns for p in objects.iterdir()}
    root.release(b)
    c = root.claim("cam3", owner="c")  # every chunk is in the cache now: nothing fetched again
    assert {p.name: p.stat().st_mtime_ns for p in objects.iterdir()} == stamp
    assert sorted(p.name for p in (c.local_dir / "chunks").iterdir()) == sorted(chunks)


def test_bad_keys_and_roots(tmp_path):
    root = MemoryRoot(str(tmp_path / "r"))
    for bad in ("", "../x", "a/b", ".hidden", "x" * 129, None):
        with pytest.raises(BadSessionKey):
            root.claim(bad, owner="a")
    with pytest.raises(StorageError, match="nosuchproto"):
        MemoryRoot("nosuchproto://bucket/x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot create memory root"):
        MemoryRoot(str(tmp_path / "file" / "sub"))


# --------------------------------------------------------------------------- keyed sessions, real model

def make_manager(backend, root, name: str, **kw) -> ClusterSessionManager:
    config = ManagerConfig(**{"asr": None, "max_fps": 100.0,
                              "default_session": SessionConfig(window_tokens=64, max_new_tokens=4), **kw})
    return ClusterSessionManager(backend, config, root=root, replica={"replica": name})


def test_session_moves_between_replicas_with_its_memory(backend, frames, root):
    a = make_manager(backend, root, "a")
    b = make_manager(backend, root, "b")
    try:
        sid = a.open_keyed("cam1")
        feed(a, sid, frames[:10])
        a.submit_text(sid, 9.0, "the red bike passes the gate").result(60)
        first = a.ask(sid, "what passed the gate?").result(60)
        before = a.stats(sid)
        assert before["cluster"]["replica"] == "a" and before["cluster"]["epoch"] == 1
        a.close_session(sid, reason="disconnected")  # saved to the root on the way out
        sid_b = b.open_keyed("cam1")
        after = b.stats(sid_b)
        assert after["cluster"]["replica"] == "b" and after["cluster"]["epoch"] == 2
        assert after["cluster"]["restored_from"] == 1
        assert before["frames"] == 10
        # the memory (every frame and the note, the window included) and the stream clock moved along
        assert after["bank_chunks"] >= 1 and after["next_position"] >= before["next_position"]
        assert after["stream_time_s"] == pytest.approx(before["stream_time_s"])
        answer = b.ask(sid_b, "what passed the gate?").result(60)
        memory = [e for e in answer.evidence if e.source == "memory"]
        assert memory, "the reopened session answers from the memory saved before the move"
        assert max(e.t_end for e in memory) <= before["stream_time_s"] + 1e-6
        assert first.text is not None
        with pytest.raises(LiveUpdateRefused, match="reopened"):
            b.update_session(sid_b, {"window_tokens": 32})
        with pytest.raises(LiveUpdateRefused, match="memory root"):
            b.update_session(sid_b, {"memory_dir": "/tmp/elsewhere"})
        b.update_session(sid_b, {"max_new_tokens": 3})  # a live field still changes
    finally:
        a.shutdown()
        b.shutdown()


def test_zombie_replica_is_refused_and_closes_its_copy(backend, frames, root):
    a = make_manager(backend, root, "a", save_interval_s=0.2)
    b = make_manager(backend, root, "b")
    try:
        sid = a.open_keyed("cam9")
        events = []
        a.subscribe(sid, events.append)
        feed(a, sid, frames[:4])
        a.save_keyed(sid, force=True)
        sid_b = b.open_keyed("cam9")  # a did not see this: it is now a zombie for cam9
        taken = b.stats(sid_b)
        assert taken["stream_time_s"] == pytest.approx(frames[3].pts)
        feed(b, sid_b, frames[4:6])
        b.save_keyed(sid_b, force=True)
        deadline = time.monotonic() + 30
        # a's next periodic save is refused and closes its copy (the event comes last in the close)
        while not any(e.get("type") == "session.closed" for e in events):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert sid not in a.sessions()
        assert any(e.get("type") == "session.closed" and e.get("reason") == "moved to another replica" for e in events)
        assert a.manager_stats()["cluster"]["stale_refused"] >= 1
        saved = b.stats(sid_b)
        c = make_manager(backend, root, "c")
        try:
            reopened = c.stats(c.open_keyed("cam9"))  # what b saved, untouched by the zombie
            assert reopened["stream_time_s"] == pytest.approx(frames[5].pts)
            assert reopened["next_position"] >= saved["next_position"]
        finally:
            c.shutdown()
    finally:
        a.shutdown()
        b.shutdown()


def test_config_errors_name_the_field(backend, tmp_path):
    from app.serving.cluster.config import ClusterConfig

    with pytest.raises(ClusterConfigError, match="replicas"):
        ClusterConfig(memory_root=str(tmp_path), replicas=0)
    with pytest.raises(ClusterConfigError, match="session_header"):
        ClusterConfig(memory_root=str(tmp_path), session_header="bad header")
    with pytest.raises(ConfigError, match="save_interval_s"):  # the manager's one save interval
        make_manager(backend, MemoryRoot(str(tmp_path)), "a", save_interval_s=0.0)
    m = make_manager(backend, MemoryRoot(str(tmp_path)), "a", save_interval_s=2.5)
    try:
        assert m.save_interval_s == 2.5 == m.config.save_interval_s
    finally:
        m.shutdown()


def test_a_full_replica_refuses_without_taking_the_session(backend, tmp_path):
    from app.serving.errors import SessionLimit

    root = MemoryRoot(str(tmp_path / "root"))
    config = ManagerConfig(asr=None, max_sessions=1, default_session=SessionConfig(window_tokens=64))
    m = ClusterSessionManager(backend, config, root=root, replica={"replica": "a"})
    try:
        m.open_keyed("k1")
        with pytest.raises(SessionLimit, match="max_sessions"):
            m.open_keyed("k2")
        assert root.current_epoch("k2") == 0  # no epoch claimed: an owner elsewhere keeps it
        assert m.open_keyed("k1")  # the same session again replaces its old connection, even when full
    finally:
        m.shutdown()


def test_dialog_and_source_files_sync_before_the_manifest(tmp_path):
    """The dialog's KV and the source record travel with the memory (uploaded before the manifest,
    fetched on take-over); a file gone since the epoch's last save is removed from the root too."""
    root = MemoryRoot(f"memory://livesight-small-{uuid.uuid4().hex[:8]}", cache_dir=str(tmp_path / "cache"))
    a = root.claim("cam5", owner="a")
    save = fake_save(a.local_dir, {"000000000000.kvc": b"k"}, "a1")

    def save_with_dialog() -> None:
        save()
        (a.local_dir / "dialog.safetensors").write_bytes(b"dialog-kv")
        (a.local_dir / "source.json").write_text('{"spec": "rtsp://cam/1"}')

    root.commit(a, save_with_dialog)
    dest = root.epoch_dir("cam5", 1)
    assert root._fs.cat_file(f"{dest}/dialog.safetensors") == b"dialog-kv"
    (a.local_dir / "source.json").unlink()  # the source stopped: the next save must not leave its record
    root.commit(a, save)
    assert not root._fs.exists(f"{dest}/source.json")
    b = root.claim("cam5", owner="b")
    assert (b.local_dir / "dialog.safetensors").read_bytes() == b"dialog-kv"
    assert not (b.local_dir / "source.json").exists()


def test_dialog_and_watch_rules_move_with_the_session(backend, frames, root):
    a = make_manager(backend, root, "a")
    b = make_manager(backend, root, "b")
    try:
        sid = a.open_keyed("cam7")
        feed(a, sid, frames[:6])
        rule = a.watch(sid, "is a bike at the gate?")
        a.ask(sid, "what passed the gate?").result(60)
        a.ask(sid, "and then?").result(60)
        before = a.stats(sid)
        assert before["dialog_tokens"] > 0
        a.close_session(sid, reason="disconnected")
        sid_b = b.open_keyed("cam7")
        after = b.stats(sid_b)
        assert after["cluster"]["restored_from"] == 1
        assert after["dialog_tokens"] == before["dialog_tokens"]
        session = b.get(sid_b)
        assert [(r.rule_id, r.text) for r in session.rules()] == [(rule.rule_id, rule.text)]
        assert b.unwatch(sid_b, rule.rule_id)  # the client's rule id still names it
        assert b.ask(sid_b, "what did I ask first?").result(60).text is not None
    finally:
        a.shutdown()
        b.shutdown()


def _wait_event(events: list, kind: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in events if e.get("type") == kind]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {kind} event: {events}"
        time.sleep(0.05)


def test_a_played_file_is_not_replayed_after_a_move(backend, bikes_path, tmp_path):
    root = MemoryRoot(str(tmp_path / "root"))
    a = make_manager(backend, root, "a", allow_file_sources=True)
    b = make_manager(backend, root, "b", allow_file_sources=True)
    try:
        sid = a.open_keyed("cam8")
        a.set_source(sid, str(bikes_path), fps=2.0, realtime=True)
        deadline = time.monotonic() + 60
        while a.stats(sid)["ingest"]["frames_processed"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a.save_keyed(sid, force=True)
        with open(root.epoch_dir("cam8", 1) + "/source.json") as fh:
            record = json.load(fh)
        assert record["kind"] == "file" and record["spec"] == str(bikes_path)
        sid_b = b.open_keyed("cam8")  # a died (it never closed the session): b takes over
        events: list[dict] = []
        b.subscribe(sid_b, events.append)
        ended = _wait_event(events, "input_source.ended")
        assert ended["reason"] == "session moved" and "not played again" in ended["message"]
        assert b.source_progress(sid_b) is None
    finally:
        a.shutdown()
        b.shutdown()


def test_a_live_source_is_restarted_by_the_new_owner(backend, rtsp_server, tmp_path):
    server = rtsp_server(fps=10, width=160, height=120)
    root = MemoryRoot(str(tmp_path / "root"))
    a = make_manager(backend, root, "a")
    b = make_manager(backend, root, "b")
    try:
        sid = a.open_keyed("cam10")
        a.set_source(sid, server.url, fps=2.0)
        deadline = time.monotonic() + 60
        while a.stats(sid)["ingest"]["frames_processed"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a.save_keyed(sid, force=True)
        saved_time = a.stats(sid)["stream_time_s"]
        sid_b = b.open_keyed("cam10")  # a died (it never closed the session): b takes over
        assert b.source_progress(sid_b) is None  # nothing starts before the client is back
        events: list[dict] = []
        b.subscribe(sid_b, events.append)
        started = _wait_event(events, "input_source.started")
        assert started["resumed"] is True and started["source"]["live"] is True
        deadline = time.monotonic() + 60
        while b.stats(sid_b)["ingest"]["frames_processed"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the restarted source continues the saved stream clock, never going back before it
        assert b.stats(sid_b)["stream_time_s"] > saved_time
        assert b.manager_stats()["cluster"]["sources_resumed"] == 1
        # stopped by the client: the next owner does not restart it
        assert b.stop_source(sid_b)
        b.close_session(sid_b, reason="disconnected")
        assert root.committed_epochs("cam10") == [2]
        assert not os.path.exists(root.epoch_dir("cam10", 2) + "/source.json")
        c = make_manager(backend, root, "c")
        try:
            sid_c = c.open_keyed("cam10")
            c.subscribe(sid_c, lambda event: None)
            assert c.source_progress(sid_c) is None
        finally:
            c.shutdown()
    finally:
        a.shutdown()
        b.shutdown()
