"""The shared memory root: where every replica keeps and finds the sessions' saved memories.

Layout under the root (a POSIX path every replica mounts, or an fsspec URL such as ``s3://bucket/x``)::

    sessions/<key>/epochs/000000000003     one empty-ish file per take-over, created exclusively
    sessions/<key>/e000000000003/           the memory of epoch 3: a saved session directory
        chunks/000000000042.kvc             (memory.bank: immutable, checksummed chunk files)
        summaries.npy, index.faiss          (memory.bank)
        dialog.safetensors                  the dialog's KV (app.engine.dialog_store)
        source.json                         the server-pulled source while it runs (cluster manager)
        session.json                        clock, positions, watch rules (app.engine.persistence)
        manifest.json                       the commit point, written (uploaded) last

**Epochs.** Each take-over of a session (a new connection, a replica that died, a reconnect routed
elsewhere) claims the next epoch by creating ``epochs/<n>`` exclusively (``O_CREAT | O_EXCL`` on a
POSIX file system; ``open(mode="xb")`` on fsspec: on S3, s3fs sends a conditional PUT with
``If-None-Match: *``, which S3 refuses with 412 when the key exists, so exactly one of two claimers
wins; a root whose back end does not refuse is itself refused when it is opened, see
``MemoryRoot._check_exclusive_create``). An owner writes only its own ``e<n>`` directory, and
before every save (and again before the manifest, the commit point) it checks that ``n`` is
still the newest epoch: an older owner (a zombie replica that lost its session) is refused with
:class:`StaleEpoch` and, writing only its own directory, cannot corrupt the memory its successor
reads.

**Take-over.** The new owner starts ``e<n>`` from the newest committed epoch before it: on POSIX the
chunk files are hard-linked (they never change) and the small files copied; on fsspec the files are
fetched in parallel into a local directory through a content-addressed read cache (chunks keyed by
their sha256 from the manifest, so a session moving back and forth fetches each chunk once), and
the bank works on the local copy; each save uploads the chunk files not yet uploaded in this epoch,
then the small files, then the manifest last.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from app.engine.dialog_store import DIALOG_FILE
from app.serving.cluster.errors import BadSessionKey, StaleEpoch, StorageError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SESSION_FILE = "session.json"
CHUNK_DIR = "chunks"
EPOCH_DIR = "epochs"
#: The running server-pulled source of a keyed session (written by the cluster's session manager).
SOURCE_FILE = "source.json"
#: Small files of a saved memory other than the manifest, uploaded before it (``session.json`` last:
#: it names the dialog file's checksum).
SMALL_FILES = ("summaries.npy", "index.faiss", DIALOG_FILE, SOURCE_FILE, SESSION_FILE)
#: A session key: what a client's ``x-session-id`` (or ``?session=``) may be.
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Claims tried in a row when other owners claim the same session at the same moment.
CLAIM_ATTEMPTS = 16


def check_key(key: object) -> str:
    """``key`` when it can name a session directory; :class:`BadSessionKey` otherwise."""
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise BadSessionKey(f"session id must be 1-128 characters of letters, digits, '.', '_' or '-' starting with "
                            f"a letter or digit; got {key!r}")
    return key


def is_url(root: str) -> bool:
    """Whether ``root`` is an fsspec URL (``scheme://...``, ``file://`` included) rather than a plain path."""
    return "://" in root


def epoch_name(epoch: int) -> str:
    return f"{epoch:012d}"


@dataclass
class Claim:
    """One owner's hold on one session.

    Attributes:
        key: the session key. epoch: this owner's epoch. local_dir: the directory the session's
        bank works in (under the root itself on POSIX; a local copy for URLs). restored_from: the
        epoch whose memory this one started from (None: a new session). uploaded: chunk files
        already uploaded in this epoch (URLs only). small: ``(size, mtime_ns)`` of each small file as
        last uploaded in this epoch (URLs only: an unchanged dialog file is not uploaded again).
    """

    key: str
    epoch: int
    local_dir: Path
    restored_from: int | None = None
    uploaded: set[str] = field(default_factory=set)
    small: dict[str, tuple[int, int]] = field(default_factory=dict)
    saves: int = 0
    last_save: float | None = None


class MemoryRoot:
    """The shared root of session memories (see the module docstring for the layout and rules).

    Args:
        root: a directory every replica reaches (NFS or another shared POSIX file system) or an
            fsspec URL (``s3://bucket/prefix`` with s3fs installed, ``memory://``, ``file://``, ...).
        cache_dir: local directory for the copies and the read cache of URL roots (default: a
            ``livesight-cluster-cache`` directory in the system temp dir).
        fetch_threads: parallel fetches and uploads for URL roots. [1, 64]
        storage_options: keyword arguments for the fsspec file system (credentials, endpoint).

    Raises:
        StorageError: the root cannot be created or reached.
    """

    def __init__(self, root: str, *, cache_dir: str | None = None, fetch_threads: int = 8,
                 storage_options: dict | None = None) -> None:
        if not isinstance(root, str) or not root.strip():
            raise StorageError(f"memory root must be a path or URL; got {root!r}")
        if isinstance(fetch_threads, bool) or not isinstance(fetch_threads, int) or not 1 <= fetch_threads <= 64:
            raise StorageError(f"fetch_threads must be an integer in [1, 64]; got {fetch_threads!r}")
        self.root = root
        self.fetch_threads = fetch_threads
        self._fs = None
        self._lock = threading.Lock()
        if is_url(root):
            try:
                import fsspec
            except ImportError:  # pragma: no cover - fsspec comes with huggingface_hub
                raise StorageError("an fsspec URL as memory root needs fsspec (pip install fsspec)") from None
            try:
                self._fs, self._base = fsspec.core.url_to_fs(root, **(storage_options or {}))
                self._fs.makedirs(self._base, exist_ok=True)
            except (ImportError, ValueError) as exc:  # unknown protocol, or its package (s3fs, ...) is missing
                raise StorageError(f"cannot use memory root {root}: {exc}") from None
            except OSError as exc:
                raise StorageError(f"cannot reach memory root {root}: {exc}") from None
            self._base = self._base.rstrip("/")
            cache = cache_dir or os.path.join(tempfile.gettempdir(), "livesight-cluster-cache")
            self.cache = Path(cache)
            self._check_exclusive_create()
        else:
            self._base = os.path.abspath(os.path.expanduser(root))
            try:
                os.makedirs(self._base, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create memory root {self._base}: {exc}") from None
            self.cache = Path(cache_dir) if cache_dir else None

    @property
    def remote(self) -> bool:
        """Whether the root is an fsspec URL (memories are copied to local directories and synced)."""
        return self._fs is not None

    # ---- paths --------------------------------------------------------------------------------
    def _session(self, key: str) -> str:
        return f"{self._base}/sessions/{check_key(key)}"

    def epoch_dir(self, key: str, epoch: int) -> str:
        """The root-side directory of ``key``'s memory at ``epoch``."""
        return f"{self._session(key)}/e{epoch_name(epoch)}"

    # ---- small file-system layer over POSIX and fsspec ------------------------------------------
    def _ls(self, path: str) -> list[str]:
        try:
            if self._fs is None:
                return sorted(os.listdir(path))
            # another replica may have written here since: never answer from fsspec's listing cache
            self._fs.invalidate_cache(path)
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {path}: {exc}") from None

    def _check_exclusive_create(self) -> None:
        """Refuse a URL root whose back end does not refuse a second exclusive create of one key.

        Epoch claims are only exclusive when ``open(mode="xb")`` fails on an existing key: s3fs sends
        ``If-None-Match: *``, which AWS S3 (and S3-compatible stores that implement conditional
        writes) refuse with 412; a store that ignores the header would silently let two replicas
        claim the same epoch. Probed once per root (two creates of one probe key, then removed).

        Raises:
            StorageError: the back end overwrote the probe, or the probe failed.
        """
        probe = f"{self._base}/{EPOCH_DIR}-probe/{uuid.uuid4().hex}"
        try:
            if not self._create_exclusive(probe, b"first"):
                raise StorageError(f"memory root {self.root}: a new probe key {probe} already exists")
            exclusive = not self._create_exclusive(probe, b"second")
        finally:
            try:
                self._fs.rm_file(probe)
            except OSError:  # a leftover probe costs a few bytes only
                logger.warning("could not remove the probe %s", probe)
        if not exclusive:
            raise StorageError(
                f"memory root {self.root}: its storage does not refuse creating a key that exists "
                "(open(mode='xb'), a conditional PUT with If-None-Match), so two replicas could claim one session "
                "at once; use a store with conditional writes (AWS S3, or an S3-compatible store that implements "
                "If-None-Match) or a shared POSIX directory")

    def _exists(self, path: str) -> bool:
        if self._fs is None:
            return os.path.exists(path)
        self._fs.invalidate_cache(path)
        return bool(self._fs.exists(path))

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` holding ``data`` unless it exists; True when this call created it."""
        try:
            if self._fs is None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                return True
            self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with self._fs.open(path, "xb") as fh:
                fh.write(data)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc}") from None

    # ---- epochs -------------------------------------------------------------------------------
    def epochs(self, key: str) -> list[int]:
        """Every epoch claimed for ``key``, oldest first."""
        return sorted(int(name) for name in self._ls(f"{self._session(key)}/{EPOCH_DIR}") if name.isdigit())

    def current_epoch(self, key: str) -> int:
        """The newest epoch of ``key`` (0: never claimed)."""
        epochs = self.epochs(key)
        return epochs[-1] if epochs else 0

    def committed_epochs(self, key: str) -> list[int]:
        """Epochs of ``key`` whose memory was committed (manifest and session file present), oldest first."""
        out = []
        for name in self._ls(self._session(key)):
            if name.startswith("e") and name[1:].isdigit():
                d = f"{self._session(key)}/{name}"
                if self._exists(f"{d}/{MANIFEST}") and self._exists(f"{d}/{SESSION_FILE}"):
                    out.append(int(name[1:]))
        return sorted(out)

    def check(self, claim: Claim) -> None:
        """Raise :class:`StaleEpoch` unless ``claim`` still holds the newest epoch of its session."""
        current = self.current_epoch(claim.key)
        if current != claim.epoch:
            raise StaleEpoch(claim.key, claim.epoch, current)

    def claim(self, key: str, *, owner: str) -> Claim:
        """Take ``key`` over: claim the next epoch and start its memory from the newest committed one.

        Blocking (file-system or network I/O): call it off the event loop.

        Returns:
            The :class:`Claim`; ``claim.restored_from`` is the epoch whose memory was copied (None when
            the session has no saved memory yet).

        Raises:
            BadSessionKey: ``key`` cannot name a session. StorageError: the root fails.
        """
        check_key(key)
        body = json.dumps({"owner": owner, "at": time.time()}).encode()
        epoch = self.current_epoch(key) + 1
        for _ in range(CLAIM_ATTEMPTS):
            if self._create_exclusive(f"{self._session(key)}/{EPOCH_DIR}/{epoch_name(epoch)}", body):
                break
            epoch = max(epoch + 1, self.current_epoch(key) + 1)  # someone claimed it first: go past them
        else:
            raise StorageError(f"could not claim session {key!r}: {CLAIM_ATTEMPTS} other owners claimed it meanwhile")
        committed = [e for e in self.committed_epochs(key) if e < epoch]
        source = committed[-1] if committed else None
        local = self._local_dir(key, epoch)
        if source is not None:
            self._start_from(key, source, local)
        logger.info("session %s: epoch %d claimed by %s (memory from epoch %s)", key, epoch, owner, source)
        return Claim(key, epoch, local, restored_from=source)

    def _local_dir(self, key: str, epoch: int) -> Path:
        if self._fs is None:
            return Path(self.epoch_dir(key, epoch))
        return self.cache / "sessions" / key / f"e{epoch_name(epoch)}"

    def _start_from(self, key: str, source: int, local: Path) -> None:
        src = self.epoch_dir(key, source)
        try:
            if self._fs is None:
                _link_tree(Path(src), local)
            else:
                self._fetch(src, local)
        except OSError as exc:
            raise StorageError(f"cannot copy the memory of session {key!r} from epoch {source}: {exc}") from None

    # ---- URL roots: fetch and upload ------------------------------------------------------------
    def _fetch(self, src: str, local: Path) -> None:
        """Copy a committed epoch directory to ``local``: the manifest first (it names the chunks and
        their checksums), then chunks through the read cache in parallel, then the small files."""
        if local.exists():
            shutil.rmtree(local)
        (local / CHUNK_DIR).mkdir(parents=True)
        manifest_bytes = self._fs.cat_file(f"{src}/{MANIFEST}")
        manifest = json.loads(manifest_bytes)
        objects = self.cache / "objects"
        objects.mkdir(parents=True, exist_ok=True)

        def one(record: dict) -> None:
            rel, sha = record["file"], record["sha256"]
            cached = objects / sha
            if not cached.exists():
                tmp = objects / f".{sha}.{threading.get_ident()}.tmp"
                self._fs.get_file(f"{src}/{rel}", str(tmp))
                os.replace(tmp, cached)
            _link_or_copy(cached, local / rel)

        with concurrent.futures.ThreadPoolExecutor(self.fetch_threads, thread_name_prefix="livesight-fetch") as pool:
            for fut in [pool.submit(one, r) for r in manifest.get("chunks", [])]:
                fut.result()
        for name in SMALL_FILES:
            if self._fs.exists(f"{src}/{name}"):
                self._fs.get_file(f"{src}/{name}", str(local / name))
        (local / MANIFEST).write_bytes(manifest_bytes)

    def _upload(self, claim: Claim) -> None:
        """Upload ``claim``'s local directory: new chunk files (in parallel), the small files, the manifest last."""
        dest = self.epoch_dir(claim.key, claim.epoch)
        local = claim.local_dir
        manifest_bytes = (local / MANIFEST).read_bytes()
        manifest = json.loads(manifest_bytes)
        todo = [r["file"] for r in manifest.get("chunks", []) if r["file"] not in claim.uploaded]
        self._fs.makedirs(f"{dest}/{CHUNK_DIR}", exist_ok=True)

        def one(rel: str) -> str:
            self._fs.put_file(str(local / rel), f"{dest}/{rel}")  # one PUT to the final key: atomic on object stores
            return rel

        with concurrent.futures.ThreadPoolExecutor(self.fetch_threads, thread_name_prefix="livesight-upload") as pool:
            for fut in [pool.submit(one, rel) for rel in todo]:
                claim.uploaded.add(fut.result())
        for name in SMALL_FILES:
            try:
                st = (local / name).stat()
            except FileNotFoundError:
                # gone since this epoch uploaded it (a source stopped); only this owner writes e<n>
                if claim.small.pop(name, None) is not None:
                    self._fs.rm_file(f"{dest}/{name}")
                continue
            if claim.small.get(name) != (st.st_size, st.st_mtime_ns):
                self._fs.put_file(str(local / name), f"{dest}/{name}")
                claim.small[name] = (st.st_size, st.st_mtime_ns)
        self.check(claim)  # the last moment to refuse: nothing this epoch wrote is visible before the manifest
        self._fs.pipe_file(f"{dest}/{MANIFEST}", manifest_bytes)

    # ---- saving -------------------------------------------------------------------------------
    def commit(self, claim: Claim, save: Callable[[], object]) -> None:
        """Save ``claim``'s session (``save`` writes the memory to ``claim.local_dir``, e.g.
        ``Session.save``) and make it the session's memory on the root.

        Refused with :class:`StaleEpoch` (before anything is written, and again before the manifest)
        when another owner took the session over. Older epochs' directories are removed once this one
        is committed.

        Raises:
            StaleEpoch: this owner lost the session. StorageError: the root fails.
        """
        self.check(claim)
        save()
        try:
            if self._fs is not None:
                self._upload(claim)
            else:
                self.check(claim)
        except StaleEpoch:
            raise
        except OSError as exc:
            raise StorageError(f"cannot write the memory of session {claim.key!r} to {self.root}: {exc}") from None
        claim.saves += 1
        claim.last_save = time.time()
        self._collect(claim)

    def _collect(self, claim: Claim) -> None:
        """Remove the memory directories of epochs older than ``claim``'s (committed just now)."""
        for epoch in self.committed_epochs(claim.key):
            if epoch >= claim.epoch:
                continue
            path = self.epoch_dir(claim.key, epoch)
            try:
                if self._fs is None:
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    self._fs.rm(path, recursive=True)
            except OSError as exc:  # a leftover directory costs space only
                logger.warning("could not remove %s: %s", path, exc)

    def release(self, claim: Claim) -> None:
        """Drop the local copy of a URL root's session (the root keeps the committed memory)."""
        if self._fs is not None:
            shutil.rmtree(claim.local_dir, ignore_errors=True)

    def remove(self, claim: Claim) -> bool:
        """Delete ``claim``'s session from the root, every epoch and memory of it, when ``claim`` still
        owns it (a session nobody will ask for again, such as a closed page tab's); False when another
        owner took it over since (then nothing is removed). Drops the local copy too.

        Raises:
            StorageError: the root fails.
        """
        try:
            self.check(claim)
        except StaleEpoch:
            return False
        path = self._session(claim.key)
        try:
            if self._fs is None:
                shutil.rmtree(path, ignore_errors=True)
            else:
                self._fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove session {claim.key!r} from {self.root}: {exc}") from None
        self.release(claim)
        return True


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError:  # another file system, or links not supported (some NFS setups)
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path) -> None:
    """Start ``dst`` from the saved memory ``src``: chunks hard-linked (immutable), other files copied,
    the manifest last so ``dst`` is never a half copy that looks committed."""
    if dst.exists():
        shutil.rmtree(dst)
    (dst / CHUNK_DIR).mkdir(parents=True)
    for chunk in (src / CHUNK_DIR).iterdir() if (src / CHUNK_DIR).is_dir() else ():
        if chunk.suffix == ".kvc":
            _link_or_copy(chunk, dst / CHUNK_DIR / chunk.name)
    for name in SMALL_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    shutil.copy2(src / MANIFEST, dst / MANIFEST)
