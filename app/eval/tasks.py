"""Every spelling of every benchmark task -> one canonical task and its group.

StreamingBench's two copies of the annotations spell some tasks differently (the GitHub JSON says
"Object Recognition", the Hugging Face CSV "Object Perception"); both are reported under the name the
paper uses. OVO-Bench's files use the task codes (``EPM``...), kept as the canonical names.
"""

from __future__ import annotations

__all__ = ["GROUPS", "TASKS", "canonical_task"]

RTVU = "Real-Time Visual Understanding"
OSU = "Omni-Source Understanding"
CU = "Contextual Understanding"
BT = "Backward Tracing"
RVP = "Real-Time Visual Perception"
FAR = "Forward Active Responding"

# The groups of each benchmark, in the order reports list them.
GROUPS: dict[str, tuple[str, ...]] = {"streamingbench": (RTVU, OSU, CU), "ovo": (BT, RVP, FAR)}

# canonical task -> (benchmark, group, other spellings seen in the files)
TASKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "Object Perception": ("streamingbench", RTVU, ("Object Recognition", "OP")),
    "Causal Reasoning": ("streamingbench", RTVU, ("CR",)),
    "Clips Summarization": ("streamingbench", RTVU, ("Clips Summarize", "Clip Summarization", "CS")),
    "Attribute Perception": ("streamingbench", RTVU, ("Attribute Recognition", "ATP")),
    "Event Understanding": ("streamingbench", RTVU, ("EU",)),
    "Text-Rich Understanding": ("streamingbench", RTVU, ("Text Rich Understanding", "Text-rich Understanding", "TR")),
    "Prospective Reasoning": ("streamingbench", RTVU, ("PR",)),
    "Spatial Understanding": ("streamingbench", RTVU, ("SU",)),
    "Action Perception": ("streamingbench", RTVU, ("Action Recognition", "ACP")),
    "Counting": ("streamingbench", RTVU, ("CT",)),
    "Emotion Recognition": ("streamingbench", OSU, ("Emotion Perception", "ER")),
    "Scene Understanding": ("streamingbench", OSU, ("SCU",)),
    "Source Discrimination": ("streamingbench", OSU, ("SD",)),
    "Multimodal Alignment": ("streamingbench", OSU, ("Multi-modal Alignment", "MA")),
    "Misleading Context Understanding": ("streamingbench", CU, ("MCU",)),
    "Anomaly Context Understanding": ("streamingbench", CU, ("ACU",)),
    "Sequential Question Answering": ("streamingbench", CU, ("SQA",)),
    "Proactive Output": ("streamingbench", CU, ("PO",)),
    "EPM": ("ovo", BT, ("Episodic Memory",)),
    "ASI": ("ovo", BT, ("Action Sequence Identification",)),
    "HLD": ("ovo", BT, ("Hallucination Detection",)),
    "STU": ("ovo", RVP, ("Spatial Understanding",)),
    "OJR": ("ovo", RVP, ("Object Recognition",)),
    "ATR": ("ovo", RVP, ("Attribute Recognition",)),
    "ACR": ("ovo", RVP, ("Action Recognition",)),
    "OCR": ("ovo", RVP, ("Optical Character Recognition",)),
    "FPD": ("ovo", RVP, ("Future Prediction",)),
    "REC": ("ovo", FAR, ("Repetition Event Count",)),
    "SSR": ("ovo", FAR, ("Sequential Steps Recognition",)),
    "CRR": ("ovo", FAR, ("Clues Reveal Responding",)),
}


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def _build_lookup() -> dict[tuple[str, str], tuple[str, str]]:
    lookup: dict[tuple[str, str], tuple[str, str]] = {}
    for canonical, (benchmark, group, spellings) in TASKS.items():
        for name in (canonical, *spellings):
            lookup[(benchmark, _key(name))] = (canonical, group)
    return lookup


_LOOKUP = _build_lookup()


def canonical_task(benchmark: str, raw: str) -> tuple[str, str] | None:
    """``(canonical task, group)`` for a task name as a ``benchmark``'s file spells it (case, spaces and
    underscores ignored: ``"Object Recognition"`` and ``"object perception"`` both give
    ``("Object Perception", "Real-Time Visual Understanding")``); None when the name is unknown."""
    return _LOOKUP.get((benchmark, _key(raw)))
