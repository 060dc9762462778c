"""The Gradio page of ``livesight serve --ray``: every operation of a tab's session reaches its owner
replica, keyed like a websocket session.

Without Ray (fast): the real page over a :class:`RemoteManager` whose transport calls two real
replica-side :class:`PageSessions` (two :class:`ClusterSessionManager`s on one memory root), routed by
key; a ``gradio_client.Client`` plays a video (its bytes are sent to the owner), asks and gets an
answer with evidence; when the owner goes, the session is taken over by the other from the root;
settings, watch rules, sources and new sessions act on the owner.

On a real local Ray (slow; one cluster for the module, started by ``run_cluster`` as ``livesight serve
--ray`` does, two replicas, the page at ``/page``): two ``gradio_client`` clients play a video and ask
through the page, their stats name the owner the replicas themselves report holding the key; the Ray
processes listen on loopback, but for each replica's gRPC port, which refuses calls without the
cluster's token; headless Chromium streams its webcam to the owner and gets answers; a killed owner's
page session is taken over by a live replica with its memory.
"""

from __future__ import annotations

import json
import os

import pytest

from app.engine.config import SessionConfig
from app.serving.limits import ManagerConfig
from tests.conftest import free_port, wait_until

pytestmark = [pytest.mark.network, pytest.mark.timeout(600)]

MANAGER = ManagerConfig(asr=None, max_fps=10.0, max_sessions=4, save_interval_s=0.5,
                        default_session=SessionConfig(window_tokens=32, max_new_tokens=8))


def client_for(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def play(client, path) -> dict:
    """Upload ``path`` through the page; wait until its owner played all of it."""
    from gradio_client import handle_file

    status = client.predict(handle_file(str(path)), api_name="/play_video")
    assert "ls-error" not in status, status
    assert path.name in status

    def finished():
        stats = client.predict(api_name="/stats")
        progress, ingest = stats["source_progress"], stats["ingest"]
        settled = ingest["frames_processed"] + ingest["dropped"]["backlog"] + ingest["frame_errors"]
        done = progress and progress["finished"] and settled == ingest["frames_accepted"]
        return stats if done and stats.get("frames", -1) >= ingest["frames_processed"] else None

    return wait_until(finished, 120, "the uploaded video to finish playing")


def ask(client, question: str) -> dict:
    """Ask through ``/ask``; the answer's details, with ``partials``: the texts streamed before it."""
    job = client.submit(question, 24, api_name="/ask")
    partials = [text for text, info in job if not info["done"]]
    text, details = job.result()
    assert details["done"] and details["text"] == text, details
    assert all(" ".join(text.split()).startswith(" ".join(p.split())) for p in partials)
    return {**details, "partials": partials}


# ---- without Ray: the page over two replica-side PageSessions, routed by key ---------------------------
class KeyRouter:
    """A transport routing each key to one of the live replicas' :class:`PageSessions` (a stable
    hash over the live ones, as the consistent-hash router does)."""

    def __init__(self, replicas: dict) -> None:
        from app.serving.cluster.remote_manager import LocalTransport

        self.replicas = {name: LocalTransport(pages) for name, pages in replicas.items()}
        self.routed: dict[str, str] = {}

    def _pick(self, key: str | None):
        import zlib

        names = sorted(self.replicas)
        name = names[zlib.crc32((key or "").encode()) % len(names)]
        if key:
            self.routed[key] = name
        return self.replicas[name]

    def call(self, key, method, *args, **kwargs):
        return self._pick(key).call(key, method, *args, **kwargs)

    call_once = call

    def stream(self, key, method, *args, **kwargs):
        return self._pick(key).stream(key, method, *args, **kwargs)


@pytest.fixture(scope="module")
def local_cluster(backend, tmp_path_factory, page_env):
    from app.serving.cluster.manager import ClusterSessionManager
    from app.serving.cluster.page_ops import PageSessions
    from app.serving.cluster.remote_manager import RemoteManager
    from app.serving.cluster.storage import MemoryRoot
    from ui.config import PageConfig
    from ui.page import build_page, launch_options

    root = MemoryRoot(str(tmp_path_factory.mktemp("page-root")))
    managers = {name: ClusterSessionManager(backend, MANAGER, root=root, replica={"replica": name})
                for name in ("r1", "r2")}
    pages = {name: PageSessions(m, upload_dir=str(tmp_path_factory.mktemp(f"uploads-{name}")))
             for name, m in managers.items()}
    router = KeyRouter(pages)
    remote = RemoteManager(router)
    demo = build_page(remote, PageConfig(stats_every_s=0.5, source_fps=4.0))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "managers": managers, "pages": pages, "router": router,
               "remote": remote, "demo": demo, "root": root}
    finally:
        demo.close()
        remote.shutdown()
        for p in pages.values():
            p.close_all()
        for m in managers.values():
            m.shutdown()


def test_page_sessions_live_on_their_owner_and_move_with_their_memory(local_cluster, synthetic_media):
    url, router, managers = local_cluster["url"], local_cluster["router"], local_cluster["managers"]
    client = client_for(url)
    try:
        stats = play(client, synthetic_media.scene_mp4)
        key = stats["cluster"]["key"]
        assert key.startswith("page-") and stats["cluster"]["epoch"] >= 1
        owner = router.routed[key]
        assert stats["cluster"]["replica"] == owner
        assert managers[owner].manager_stats()["cluster"]["keys"] == [key]  # the session is on its owner only
        other = next(n for n in managers if n != owner)
        assert key not in managers[other].manager_stats()["cluster"]["keys"]
        details = ask(client, "What moved across the scene?")
        assert any(e["source"] == "memory" for e in details["evidence"]), details["evidence"]
        wait_until(lambda: client.predict(api_name="/stats")["cluster"]["saves"] >= 1, 30, "a save to the root")

        # the owner goes away (its sessions stay on the root): the next call reaches the other replica,
        # which takes the session over from the memory root, memory and clock included
        seen = stats["stream_time_s"]
        gone = router.replicas.pop(owner)
        try:
            moved = client.predict(api_name="/stats")
            assert moved["cluster"]["replica"] == other and moved["cluster"]["key"] == key
            assert moved["cluster"]["restored_from"] is not None
            assert moved["stream_time_s"] == pytest.approx(seen, abs=0.3)
            details = ask(client, "What was there before?")
            memory = [e for e in details["evidence"] if e["source"] == "memory"]
            assert memory and max(e["t_end"] for e in memory) <= seen + 1e-6
            client.close()
            # the tab went: its session is closed on its (new) owner
            wait_until(lambda: key not in managers[other].manager_stats()["cluster"]["keys"], 30,
                       "the page session to close")
            # the old owner's copy learnt it lost the session (its saver checks the epoch) and closed it
            wait_until(lambda: key not in managers[owner].manager_stats()["cluster"]["keys"], 30,
                       "the old owner to give the session up")
            # nobody can name a closed tab's key again: its memory is gone from the root
            assert local_cluster["root"].epochs(key) == []
        finally:
            router.replicas[owner] = gone
    finally:
        client.close()


def test_every_page_operation_acts_on_the_owner(local_cluster, tmp_path):
    from gradio_client.exceptions import AppError

    router, managers = local_cluster["router"], local_cluster["managers"]
    client = client_for(local_cluster["url"])
    try:
        key = client.predict(api_name="/stats")["cluster"]["key"]
        owner = managers[router.routed[key]]
        sid = next(s for s in owner.sessions() if owner.key_of(s) == key)

        assert client.predict({"top_k": 3}, api_name="/settings")["top_k"] == 3
        assert owner.session_config(sid).top_k == 3
        with pytest.raises(AppError, match="top_k"):
            client.predict({"top_k": -1}, api_name="/settings")

        added = client.predict("a person enters", api_name="/watch")
        assert [r.rule_id for r in owner.rules(sid)] == [added["rule_id"]]
        assert client.predict(api_name="/stats")["rules"] == [{"rule_id": added["rule_id"], "text": "a person enters"}]
        assert client.predict(added["rule_id"], api_name="/unwatch")["removed"] is True
        assert owner.rules(sid) == []

        # the owner never opens its own files for the page: a local path is refused like on one process
        secret = tmp_path / "secret.mp4"
        secret.write_bytes(b"not for the page")
        refused = client.predict(str(secret), api_name="/set_source")
        assert refused["ok"] is False and owner.source_progress(sid) is None

        # a new session: the old one closes on its owner, the new key opens on its own owner
        fresh = client.predict({"top_k": 5}, api_name="/new_session")
        assert fresh["session_id"] != key and fresh["session_id"].startswith("page-")
        assert fresh["settings"]["top_k"] == 5
        assert key not in owner.manager_stats()["cluster"]["keys"]
        new_owner = managers[router.routed[fresh["session_id"]]]
        assert fresh["session_id"] in new_owner.manager_stats()["cluster"]["keys"]
    finally:
        client.close()


# ---- on a real local Ray: the page deployment at /page -------------------------------------------------
@pytest.fixture(scope="module")
def ray_page(tmp_path_factory, page_env):
    """``run_cluster`` (what ``livesight serve --ray`` runs) in a thread, until the module is done."""
    import io
    import threading

    from app.serving.cluster.deployment import init_ray, local_ray_env, run_cluster
    from ui.page import mount

    local_ray_env()  # before Ray is imported: loopback only, token authentication (as livesight serve --ray)
    pytest.importorskip("ray", reason="Ray is not installed (pip install livesight[ray])")
    import ray

    from app.serving.cluster.config import ClusterConfig
    from app.serving.process import ServeOptions

    root = tmp_path_factory.mktemp("ray-page-root")
    cfg = ClusterConfig(memory_root=str(root), replicas=2, replica_cpus=1.0, num_cpus=2)
    port = free_port()
    opts = ServeOptions(model="tiny-smolvlm", fallback_model=None, ui=True, ws_port=port, manager=MANAGER)
    try:
        init_ray(cfg)
    except Exception as exc:  # noqa: BLE001 - the one reason to skip: Ray cannot start on this machine
        pytest.skip(f"Ray cannot start here: {exc}")
    out, stop = io.StringIO(), threading.Event()
    runner = threading.Thread(target=run_cluster, args=(cfg, opts), daemon=True,
                              kwargs={"out": out, "stop": stop, "page_mount": mount})
    runner.start()
    try:
        wait_until(lambda: "ready" in out.getvalue() or not runner.is_alive(), 300, "livesight serve --ray to be ready")
        printed = out.getvalue()
        assert "ready" in printed, printed
        url = f"http://127.0.0.1:{port}/page/"
        assert f"page: {url}\n" in printed, printed  # the page's address, running
        assert printed.count("replica ") >= 2, printed
        yield {"url": url, "printed": printed}
    finally:
        stop.set()
        runner.join(120)
        ray.shutdown()


def test_the_page_under_ray_serves_each_session_from_its_owner(ray_page, synthetic_media):
    import urllib.request

    from app.serving.cluster.registry import find_registry, live_replicas

    with urllib.request.urlopen(ray_page["url"], timeout=30) as response:  # what a browser loads first
        html = response.read().decode()
    assert response.status == 200 and "gradio" in html.lower()
    with urllib.request.urlopen(ray_page["url"] + "config", timeout=30) as response:
        assert json.loads(response.read())["root"].rstrip("/").endswith("/page")  # its assets and API under /page
    clients = [client_for(ray_page["url"]) for _ in range(2)]
    try:
        owners = {}
        for i, client in enumerate(clients):
            stats = play(client, synthetic_media.scene_mp4) if i == 0 else client.predict(api_name="/stats")
            owners[stats["cluster"]["key"]] = stats["cluster"]["replica"]
        keys = list(owners)
        assert len(set(keys)) == 2 and all(k.startswith("page-") for k in keys)
        details = ask(clients[0], "What moved across the scene?")
        assert details["partials"], "the answer did not stream"  # pieces came through the streaming handle call
        assert details["evidence"] and any(e["source"] == "memory" for e in details["evidence"])
        assert all(0.0 <= e["t_start"] <= e["t_end"] for e in details["evidence"])

        def reported():  # every replica reports the keys it holds: each page key is on the owner its stats name
            held = {k: r["replica"] for r in live_replicas(find_registry()) for k in r.get("keys", [])}
            return held if all(held.get(k) == owners[k] for k in keys) else None

        wait_until(reported, 30, "the replicas to report the page sessions on their owners")
        for client, key in zip(clients, keys):  # later calls keep landing on the owner
            assert client.predict(api_name="/stats")["cluster"]["replica"] == owners[key]
    finally:
        for client in clients:
            client.close()


def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every TCP socket in LISTEN state owned by ``pids`` (from /proc)."""
    import ipaddress

    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as fh:
            next(fh)
            for line in fh:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                addr_hex, port_hex = local.split(":")
                raw = bytes.fromhex(addr_hex)
                # /proc prints each 32-bit word little-endian
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                out.append((inodes[inode], str(ipaddress.ip_address(raw if width == 16 else raw[:4])), int(port_hex, 16)))
    return out


def test_ray_ports_listen_on_loopback_or_refuse_calls_without_the_token(ray_page):
    """Every socket the Ray processes listen on is on loopback, except each Serve replica's
    inter-deployment gRPC server, which Ray Serve 2.60 binds to ``[::]:0`` in its code (no option
    changes it): that one refuses calls without the cluster's token (Ray token authentication, on for a
    local Ray started by ``livesight serve --ray``)."""
    import ipaddress

    import grpc
    import psutil

    names = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.pid != os.getpid() and ("ray" in (p.info["name"] or "").lower() or "/ray/" in cmd or cmd.startswith("ray::")):
            names[p.pid] = cmd or p.info["name"]
    sockets = listening_sockets(set(names))
    assert len(sockets) >= 5, f"found too few listening sockets of the Ray processes: {sockets}"
    def loopback(addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ::ffff:127.0.0.1 is loopback too

    wide = [(pid, addr, port) for pid, addr, port in sockets if not loopback(addr)]
    assert all(names[pid].startswith("ray::ServeReplica") for pid, _, _ in wide), \
        [(names[pid], addr, port) for pid, addr, port in wide]
    assert len({pid for pid, _, _ in wide}) == len(wide), "more than one wide port in one replica"
    assert os.environ.get("RAY_AUTH_MODE") == "token"
    for _, _, port in wide:  # a call without the token is refused before any method runs
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
            with pytest.raises(grpc.RpcError) as info:
                call(b"", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value


@pytest.mark.browser
def test_a_browser_tab_streams_its_webcam_to_the_owner_and_gets_answers(ray_page, chromium_path, tmp_path):
    """Headless Chromium on the page under Ray: the fake webcam streams, the frames land on the tab's
    owner (read back through the websocket ingress's ``GET /session`` with the tab's key in the session
    header, which the router sends to the same owner), and the chat answers with evidence thumbnails."""
    import urllib.request

    from tests.ui.browser import open_tab, write_y4m_clip

    clip = write_y4m_clip(tmp_path / "camera.y4m")
    base = ray_page["url"].removesuffix("page/")

    def owner_stats(key: str) -> dict:
        request = urllib.request.Request(base + "session", headers={"x-session-id": key})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    with open_tab(chromium_path, ray_page["url"], camera=clip, session_prefix="page-", timeout_ms=60_000) as (tab, key):
        tab.get_by_role("button", name="Click to Access Webcam").click()
        tab.wait_for_function(
            "() => { const v = document.querySelector('[data-testid=webcam-video]'); return v && v.readyState >= 2; }",
            timeout=30_000)
        tab.get_by_role("button", name="capture photo").click()
        stats = wait_until(lambda: (s := owner_stats(key))["ingest"]["frames_processed"] >= 4 and s, 90,
                           "4 webcam frames processed on the owner")
        assert stats["cluster"]["key"] == key and stats["cluster"]["replica"]
        question = tab.locator("#ls-question textarea")
        question.fill("What moved across the scene?")
        question.press("Enter")
        bot = tab.locator("[data-testid=bot]").first
        bot.locator("img.ls-thumb").first.wait_for(timeout=120_000)
        assert bot.inner_text().split("Evidence")[0].strip()
        assert owner_stats(key)["answers"] == 1


def test_a_page_session_whose_replica_dies_is_taken_over_with_its_memory(ray_page, synthetic_media):
    """Kill the owner of a tab's session: the tab's next calls reach a live replica (the page retries
    while Ray replaces the dead one), which takes the session over from the memory root."""
    import ray
    from gradio_client.exceptions import AppError

    client = client_for(ray_page["url"])
    try:
        stats = play(client, synthetic_media.scene_mp4)
        rule = client.predict("a person enters", api_name="/watch")
        saves = stats["cluster"]["saves"]
        wait_until(lambda: client.predict(api_name="/stats")["cluster"]["saves"] > saves, 30,
                   "a save of the session after the rule was added")
        before = client.predict(api_name="/stats")
        owner = before["cluster"]
        ray.kill(ray.get_actor(owner["actor"], namespace="serve"), no_restart=True)

        def moved():
            try:
                st = client.predict(api_name="/stats")
            except AppError:  # the page said the replica did not answer; the tab keeps its session
                return None
            return st if st["cluster"]["replica"] != owner["replica"] else None

        after = wait_until(moved, 180, "the session to be taken over by a live replica")
        assert after["cluster"]["key"] == owner["key"] and after["cluster"]["restored_from"] is not None
        assert after["cluster"]["epoch"] > owner["epoch"]
        assert after["stream_time_s"] == pytest.approx(before["stream_time_s"], abs=0.3)
        # the watch rule came back with the memory (read from the owner's cached snapshot)
        wait_until(lambda: [r["rule_id"] for r in client.predict(api_name="/stats")["rules"]] == [rule["rule_id"]],
                   20, "the watch rule on the new owner")
        details = ask(client, "What was there before?")
        memory = [e for e in details["evidence"] if e["source"] == "memory"]
        assert memory and max(e["t_end"] for e in memory) <= before["stream_time_s"] + 1e-6
    finally:
        client.close()
