"""LiveSight on a real local Ray Serve cluster (ray.init(num_cpus=2), 127.0.0.1 only, tiny model, two
replicas): sessions stay on their owner across frames, questions and reconnects; a killed replica's
sessions reconnect, are reopened on another replica from the shared memory root and answer from
what they saw before the crash, with their dialog and watch rules; a write from the old epoch is refused.

One module-scoped cluster; skipped only when Ray cannot start here (the reason is given).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import time

import pytest

from app.engine.config import SessionConfig
from app.serving.cluster.errors import StaleEpoch
from app.serving.cluster.storage import Claim, MemoryRoot
from app.serving.limits import ManagerConfig
from app.serving.protocol import pack_frame

# about 130 s on 2 cores (Ray start, two model loads, a replica replaced): slow
pytestmark = [pytest.mark.network, pytest.mark.slow]

KEYS = ("cam-a", "cam-b", "cam-c", "cam-d")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # before Ray is imported: it reads this once (loopback only), see app/serving/cluster/deployment.py
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    pytest.importorskip("ray", reason="Ray is not installed (pip install livesight[ray])")
    from app.serving.cluster.config import ClusterConfig
    from app.serving.cluster.deployment import deploy, init_ray, shutdown, wait_replicas
    from app.serving.process import ServeOptions

    root = tmp_path_factory.mktemp("cluster-root")
    cfg = ClusterConfig(memory_root=str(root), replicas=2, replica_cpus=1.0, num_cpus=2, health_check_period_s=2.0)
    port = free_port()
    opts = ServeOptions(model="tiny-smolvlm", fallback_model=None, ui=False, ws_port=port, port=free_port(),
                        manager=ManagerConfig(asr=None, max_fps=100.0, max_sessions=4, save_interval_s=0.5,
                                              default_session=SessionConfig(window_tokens=64, max_new_tokens=4)))
    try:
        started = init_ray(cfg)
    except Exception as exc:  # noqa: BLE001 - the one reason to skip: Ray cannot start on this machine
        pytest.skip(f"Ray cannot start here: {exc}")
    try:
        deploy(cfg, opts, host="127.0.0.1", port=port)
        replicas = wait_replicas(2, timeout=180)
        assert len(replicas) == 2, replicas
        yield {"url": f"ws://127.0.0.1:{port}/", "root": str(root), "replicas": replicas}
    finally:
        shutdown(started)


def jpeg(frame) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame.rgb).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


class Client:
    """A bare websocket client naming its session in the ``x-session-id`` header."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.ws = None
        self.ids = 0

    async def connect(self, timeout: float = 90.0) -> dict:
        from websockets.asyncio.client import connect

        deadline = time.monotonic() + timeout
        while True:  # a replica that just died may still be in the router's ring for a moment
            try:
                self.ws = await connect(self.url, additional_headers={"x-session-id": self.key}, open_timeout=20,
                                        max_size=2**25, proxy=None)
                created = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
                if created.get("type") == "session.created":
                    return created
                await self.ws.close()
            except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.key}: could not reconnect: {exc!r}") from None
            await asyncio.sleep(0.5)

    async def request(self, event: dict, reply: str, timeout: float = 60.0) -> dict:
        self.ids += 1
        eid = f"e{self.ids}"
        await self.ws.send(json.dumps({**event, "event_id": eid}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.1, deadline - time.monotonic())))
            if msg.get("type") == "error" and msg["error"].get("event_id") == eid:
                raise AssertionError(f"{self.key}: {msg['error']}")
            if msg.get("type") == reply and (msg.get("reply_to") == eid or reply == "response.done"):
                return msg

    async def stats(self) -> dict:
        return (await self.request({"type": "session.stats"}, "input_video.stats"))["stats"]

    async def frames(self, frames) -> None:
        for frame in frames:
            before = (await self.stats())["ingest"]["frames_processed"]
            await self.ws.send(pack_frame(jpeg(frame), frame.pts))
            deadline = time.monotonic() + 60
            while (await self.stats())["ingest"]["frames_processed"] <= before:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

    async def ask(self, question: str) -> dict:
        done = await self.request({"type": "response.create", "response": {"input": question}}, "response.done", 120)
        return done["response"]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


def run(coro):
    return asyncio.run(coro)


def test_sessions_stay_on_their_owner(cluster, frames):
    async def main() -> dict[str, str]:
        owners: dict[str, str] = {}
        clients = [Client(cluster["url"], key) for key in KEYS]
        for c in clients:
            await c.connect()
        for i, c in enumerate(clients):
            await c.frames(frames[i * 3:(i + 1) * 3])
            answer = await c.ask("what moves?")
            assert answer["status"] in ("completed", "incomplete")
            owners[c.key] = (await c.stats())["cluster"]["replica"]
        for _ in range(2):  # reconnects land on the same owner and keep the session's memory
            for c in clients:
                await c.close()
                await c.connect()
                st = await c.stats()
                assert st["cluster"]["replica"] == owners[c.key], (c.key, st["cluster"])
                assert st["cluster"]["key"] == c.key
                await c.frames(frames[12:13])
                assert (await c.stats())["cluster"]["replica"] == owners[c.key]
        for c in clients:
            await c.close()
        return owners

    owners = run(main())
    live = {r["replica"] for r in cluster["replicas"]}
    assert set(owners.values()) <= live
    cluster["owners"] = owners


def test_killed_replica_sessions_move_with_their_memory(cluster, frames):
    import ray

    owners = cluster.get("owners")
    if owners is None:
        pytest.skip("needs test_sessions_stay_on_their_owner first")
    by_id = {r["replica"]: r for r in cluster["replicas"]}
    victim = owners[KEYS[0]]
    moved = [k for k, r in owners.items() if r == victim]

    async def before_crash() -> dict[str, float]:
        times = {}
        for key in moved:
            c = Client(cluster["url"], key)
            await c.connect()
            await c.frames(frames[13:16])
            await c.request({"type": "input_text.append", "text": f"note for {key}: the gate is open"},
                            "input_text.committed")
            created = await c.request({"type": "watch.create", "rule": "is the gate open?"}, "watch.created")
            cluster.setdefault("rules", {})[key] = created["rule"]
            st = await c.stats()
            assert st["dialog_tokens"] > 0  # the question of the first test is a turn of the dialog
            cluster.setdefault("dialog", {})[key] = st["dialog_tokens"]
            saves = st["cluster"]["saves"]
            deadline = time.monotonic() + 30
            while (await c.stats())["cluster"]["saves"] <= saves:  # wait for the next periodic save
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            times[key] = st["stream_time_s"]
            cluster.setdefault("epochs", {})[key] = st["cluster"]["epoch"]
            # keep the connection open: the crash, not a disconnect, must end it
            cluster.setdefault("open", []).append(c)
        return times

    async def after_crash(times: dict[str, float]) -> None:
        for c in cluster.pop("open"):
            try:
                await c.close()
            except Exception:  # noqa: BLE001 - the socket died with the replica
                pass
        for key in moved:
            c = Client(cluster["url"], key)
            await c.connect()
            st = await c.stats()
            assert st["cluster"]["replica"] != victim, st["cluster"]
            assert st["cluster"]["restored_from"] is not None
            assert st["stream_time_s"] == pytest.approx(times[key])
            # the conversation moved too: the same dialog turns, the watch rule under its own id
            assert st["dialog_tokens"] == cluster["dialog"][key]
            assert st["watch_rules"] == 1
            rule = cluster["rules"][key]
            deleted = await c.request({"type": "watch.delete", "rule_id": rule["rule_id"]}, "watch.deleted")
            assert deleted["rule_id"] == rule["rule_id"]
            answer = await c.ask("is the gate open?")
            memory = [e for e in answer["evidence"] if e["source"] == "memory"]
            assert memory, f"{key}: no evidence from before the crash"
            assert max(e["t_end"] for e in memory) <= times[key] + 1e-6
            cluster.setdefault("new_epochs", {})[key] = st["cluster"]["epoch"]
            await c.close()

    loop = asyncio.new_event_loop()
    try:
        times = loop.run_until_complete(before_crash())
        ray.kill(ray.get_actor(by_id[victim]["actor"], namespace="serve"), no_restart=True)
        loop.run_until_complete(after_crash(times))
    finally:
        loop.close()

    # the zombie: the dead owner's epoch may no longer write the session's memory
    root = MemoryRoot(cluster["root"])
    key = moved[0]
    old = Claim(key, cluster["epochs"][key], __import__("pathlib").Path(root.epoch_dir(key, cluster["epochs"][key])))
    with pytest.raises(StaleEpoch):
        root.commit(old, lambda: None)
    assert root.current_epoch(key) >= cluster["new_epochs"][key] > cluster["epochs"][key]
