"""The dialog of a saved session on disk: ``dialog.safetensors`` beside the bank.

The dialog is what later questions attend to besides the stream: each earlier turn (question,
answer, end marker) as the KV the model made for it, at its original positions. It is saved
exactly (the tensors as the session holds them, in their own dtype) so a reopened session's next
question attends to the same KV as before the save.

File layout (`safetensors <https://huggingface.co/docs/safetensors>`_: a JSON header and raw
tensors, read without unpickling anything): per turn ``i``, tensors ``turn{i}.keys`` and
``turn{i}.values`` ``(L, H, T_i, D)`` and ``turn{i}.positions`` ``(T_i,)`` or ``(P, T_i)`` int64;
the header's metadata names the format and the number of turns. The file is written to a
temporary sibling and renamed into place; ``session.json`` records its sha256, so a damaged or
stale file is recognised and the memory reopens without its dialog rather than not at all.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.engine.backends.types import BackendSpec, KVSegment
from app.engine.types import SessionError

logger = logging.getLogger(__name__)

#: The dialog file beside the bank's files in a saved memory directory.
DIALOG_FILE = "dialog.safetensors"
FORMAT = "livesight-dialog"
VERSION = 1


@dataclass(frozen=True)
class DialogRecord:
    """What ``session.json`` says about the dialog file: enough to recognise the right file.

    Attributes:
        file: the file's name in the memory directory.
        sha256: hex digest of the whole file.
        turns: number of turns. tokens: their total length.
        spans: ``(first position, length)`` of each turn: positions only grow within a session, so
            they name a dialog, and a save whose dialog did not change keeps the file as it is.
        size: the file's size in bytes.
    """

    file: str
    sha256: str
    turns: int
    tokens: int
    spans: tuple[tuple[int, int], ...] = ()
    size: int = 0

    def to_json(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "turns": self.turns, "tokens": self.tokens,
                "spans": [list(span) for span in self.spans], "size": self.size}

    @staticmethod
    def from_json(data: object) -> DialogRecord | None:
        """The record in ``session.json`` (None when absent); :class:`SessionError` when malformed."""
        if data is None:
            return None
        try:
            spans = tuple((int(first), int(length)) for first, length in data.get("spans", ()))
            return DialogRecord(str(data["file"]), str(data["sha256"]), int(data["turns"]), int(data["tokens"]),
                                spans, int(data.get("size", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SessionError(f"the dialog record of session.json is malformed: {exc!r}") from None


def dialog_spans(turns: Sequence[KVSegment]) -> tuple[tuple[int, int], ...]:
    """``(first position, length)`` of each turn (the first position on the first axis of 3D positions)."""
    return tuple((int(t.positions.reshape(-1)[0]) if t.length else -1, t.length) for t in turns)


def encode_dialog(turns: Sequence[KVSegment]) -> bytes:
    """The dialog file's bytes for ``turns`` (oldest first)."""
    from safetensors.torch import save

    tensors = {}
    for i, turn in enumerate(turns):
        tensors[f"turn{i}.keys"] = turn.keys.detach().cpu().contiguous()
        tensors[f"turn{i}.values"] = turn.values.detach().cpu().contiguous()
        tensors[f"turn{i}.positions"] = turn.positions.detach().cpu().contiguous()
    return save(tensors, metadata={"format": FORMAT, "version": str(VERSION), "turns": str(len(turns))})


def write_dialog(directory: str | Path, turns: Sequence[KVSegment], previous: DialogRecord | None = None
                 ) -> DialogRecord | None:
    """Write ``turns`` to ``directory/dialog.safetensors`` atomically; None (and no file) without turns.

    ``previous``: the record of this directory's last save. When it names the same turns and its
    file is still there at its size, the file is kept as it is (a long dialog is tens of MB of KV; a
    save that only added frames does not write, or upload, it again). An empty dialog removes a file
    an earlier save left.
    """
    from memory.store import atomic_write

    path = Path(directory) / DIALOG_FILE
    if not turns:
        path.unlink(missing_ok=True)
        return None
    spans = dialog_spans(turns)
    if (previous is not None and previous.file == DIALOG_FILE and previous.spans == spans and previous.size
            and path.is_file() and path.stat().st_size == previous.size):
        return previous
    data = encode_dialog(turns)
    atomic_write(path, data, durable=True)
    return DialogRecord(DIALOG_FILE, hashlib.sha256(data).hexdigest(), len(turns), sum(t.length for t in turns),
                        spans, len(data))


def read_dialog(directory: str | Path, record: DialogRecord, spec: BackendSpec, next_position: int) -> list[KVSegment]:
    """The turns of the dialog file ``record`` names, checked against it and against the model.

    Args:
        directory: the saved memory directory.
        record: what ``session.json`` recorded (file, checksum, turns, tokens).
        spec: the model reopening the memory: every turn must have its KV shape ``(L, H, *, D)``.
        next_position: the saved session's first free position: every turn lies before it.

    Raises:
        SessionError: the file is missing, damaged, from another save, or does not fit the model
            (the message says which); the caller reopens the memory without its dialog.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(directory) / record.file
    if Path(record.file).name != record.file:
        raise SessionError(f"the dialog file name {record.file!r} in session.json is not a plain file name")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SessionError(f"{path} is missing") from None
    except OSError as exc:
        raise SessionError(f"cannot read {path}: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.sha256:
        raise SessionError(f"{path} does not match the checksum session.json records (damaged or from another save)")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise SessionError(f"{path} is unreadable: {exc}") from None
    turns = []
    for i in range(record.turns):
        try:
            keys, values, positions = (tensors[f"turn{i}.{name}"] for name in ("keys", "values", "positions"))
        except KeyError as exc:
            raise SessionError(f"{path} lacks tensor {exc.args[0]}") from None
        turns.append(KVSegment(keys, values, positions))
    expected = (spec.num_layers, spec.num_kv_heads, spec.head_dim)
    for i, turn in enumerate(turns):
        k, v, p = turn.keys, turn.values, turn.positions
        if k.dim() != 4 or (k.shape[0], k.shape[1], k.shape[3]) != expected or v.shape != k.shape:
            raise SessionError(f"{path}: turn {i} has KV of shape {tuple(k.shape)}, the model needs "
                               f"({expected[0]}, {expected[1]}, T, {expected[2]})")
        if p.dim() not in (1, 2) or p.shape[-1] != k.shape[2] or p.is_floating_point():
            raise SessionError(f"{path}: turn {i} has positions of shape {tuple(p.shape)} for {k.shape[2]} tokens")
        if k.shape[2] and int(p.max()) >= next_position:
            raise SessionError(f"{path}: turn {i} lies at positions up to {int(p.max())}, past the saved session's "
                               f"next position {next_position}")
    if sum(t.length for t in turns) != record.tokens:
        raise SessionError(f"{path} holds {sum(t.length for t in turns)} dialog tokens; session.json records "
                           f"{record.tokens}")
    return turns
