"""The memory root on a real S3 API: moto's S3 server on 127.0.0.1, reached through s3fs.

Two ``MemoryRoot`` instances stand for two replicas (each with its own s3fs file system, listing
cache and local read cache). Epoch claims are conditional PUTs (``If-None-Match: *``): of two
claimers of one key exactly one wins; a zombie write from an old epoch is refused; a take-over
fetches the chunks through the read cache; a store that ignores conditional writes is refused.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import uuid

import pytest

from app.serving.cluster.errors import StaleEpoch, StorageError
from app.serving.cluster.storage import EPOCH_DIR, MemoryRoot, epoch_name
from tests.cluster.test_storage import fake_save

pytestmark = pytest.mark.network

CREDENTIALS = {"key": "testing", "secret": "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a loopback port (its own thread; stopped after the module)."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (pip install -e .[dev])")
    pytest.importorskip("s3fs", reason="s3fs is a dev dependency (pip install -e .[dev])")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    import s3fs

    # botocore wants a region and credentials; none of the machine's own (if any) are read
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    name = f"livesight-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True, **CREDENTIALS).mkdir(name)
    return name


def replica_root(s3_endpoint: str, bucket: str, cache_dir) -> MemoryRoot:
    """What one replica opens: its own s3fs instance (no shared listing cache) and read cache."""
    return MemoryRoot(f"s3://{bucket}/livesight", cache_dir=str(cache_dir), fetch_threads=4,
                      storage_options={"endpoint_url": s3_endpoint, "skip_instance_cache": True, **CREDENTIALS})


def test_save_take_over_and_zombie_on_s3(s3_endpoint, bucket, tmp_path):
    a = replica_root(s3_endpoint, bucket, tmp_path / "cache-a")
    b = replica_root(s3_endpoint, bucket, tmp_path / "cache-b")
    claim_a = a.claim("cam1", owner="a")
    assert claim_a.epoch == 1
    chunks = {f"{i:012d}.kvc": bytes([i]) * 64 for i in range(6)}
    a.commit(claim_a, fake_save(claim_a.local_dir, chunks, "a1"))
    assert a.committed_epochs("cam1") == [1]

    claim_b = b.claim("cam1", owner="b")  # a second replica takes the session over
    assert (claim_b.epoch, claim_b.restored_from) == (2, 1)
    assert {p.name: p.read_bytes() for p in (claim_b.local_dir / "chunks").iterdir()} == chunks
    # every chunk came through b's content-addressed read cache, keyed by its sha256
    objects = tmp_path / "cache-b" / "objects"
    assert sorted(p.name for p in objects.iterdir()) == sorted(hashlib.sha256(d).hexdigest() for d in chunks.values())

    # the zombie: replica a still believes it owns cam1 (its own s3fs instance has listed epochs before)
    with pytest.raises(StaleEpoch) as info:
        a.commit(claim_a, fake_save(claim_a.local_dir, {**chunks, "000000000099.kvc": b"zombie"}, "zombie"))
    assert info.value.current == 2
    epoch1 = json.loads(a._fs.cat_file(f"{a.epoch_dir('cam1', 1)}/manifest.json"))
    assert epoch1["tag"] == "a1"  # refused before its manifest: the committed memory is untouched

    more = {**chunks, "000000000006.kvc": b"new"}
    b.commit(claim_b, fake_save(claim_b.local_dir, more, "b1"))
    assert len(claim_b.uploaded) == 7
    assert b.committed_epochs("cam1") == [2]  # epoch 1's objects are removed once 2 is committed

    # the session comes back to b (a reconnect routed there): only the new chunk is fetched, the
    # others come from b's read cache, untouched
    stamps = {p.name: p.stat().st_mtime_ns for p in objects.iterdir()}
    b.release(claim_b)
    claim_c = b.claim("cam1", owner="b-again")
    assert claim_c.restored_from == 2
    assert (claim_c.local_dir / "chunks" / "000000000006.kvc").read_bytes() == b"new"
    now = {p.name: p.stat().st_mtime_ns for p in objects.iterdir()}
    assert set(now) - set(stamps) == {hashlib.sha256(b"new").hexdigest()}
    assert all(now[name] == stamp for name, stamp in stamps.items())


def test_two_claimers_of_one_epoch_one_wins(s3_endpoint, bucket, tmp_path):
    roots = [replica_root(s3_endpoint, bucket, tmp_path / f"cache-{i}") for i in range(4)]
    path = f"{roots[0]._session('cam2')}/{EPOCH_DIR}/{epoch_name(1)}"
    barrier = threading.Barrier(len(roots))
    won: list[bool] = [False] * len(roots)

    def create(i: int) -> None:
        barrier.wait()
        won[i] = roots[i]._create_exclusive(path, f"owner-{i}".encode())

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(roots))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(won) == 1, won  # the conditional PUT lets exactly one create the key
    assert roots[0]._fs.cat_file(path) == f"owner-{won.index(True)}".encode()

    # whole claims racing: every claimer gets an epoch of its own, and only the newest owns the session
    claims = [None] * len(roots)

    def claim(i: int) -> None:
        barrier.wait()
        claims[i] = roots[i].claim("cam3", owner=f"r{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(roots))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    epochs = sorted(c.epoch for c in claims)
    assert epochs == list(range(1, len(roots) + 1))
    owners = []
    for c in claims:
        try:
            roots[0].check(c)
            owners.append(c.epoch)
        except StaleEpoch:
            pass
    assert owners == [len(roots)]


def test_a_store_ignoring_conditional_writes_is_refused(tmp_path):
    """A back end whose ``open(mode="xb")`` overwrites (no conditional write) cannot hold epochs."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class Overwriting(MemoryFileSystem):
        protocol = "overwriting-test"
        root_marker = "/"

        def _open(self, path, mode="rb", **kwargs):
            return super()._open(path, "wb" if mode == "xb" else mode, **kwargs)

    fsspec.register_implementation("overwriting-test", Overwriting, clobber=True)
    with pytest.raises(StorageError, match="does not refuse creating a key that exists"):
        MemoryRoot(f"overwriting-test://bucket-{uuid.uuid4().hex[:6]}", cache_dir=str(tmp_path))
