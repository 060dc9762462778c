"""Derive the stream's prompt pieces from a tokenizer's own chat template.

A live stream is one long user turn: the sink opens it (system prompt and the
start of the user turn), frames and timed text follow, and a question closes
the user turn and opens the assistant's. Rendering the model's real chat
template around sentinel strings and splitting at them gives those pieces for
any template, so the model sees exactly the format it was trained on.
"""

from __future__ import annotations

from app.engine.backends.types import BackendError, ChatFormat

_SYS = "\x00SYSTEM\x00"
_U1 = "\x00USER1\x00"
_A1 = "\x00ASSISTANT1\x00"
_U2 = "\x00USER2\x00"


def derive_chat_format(tokenizer, stop_strings: tuple[str, ...] = ()) -> ChatFormat:
    """Split the tokenizer's chat template into sink / question / answer-end pieces.

    The sink template has a ``{system}`` field; question templates have ``{q}``.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise BackendError("the tokenizer has no chat template; cannot format questions")

    def render(messages, gen: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    def msg(role: str, text: str) -> dict:
        return {"role": role, "content": text}

    one = render([msg("system", _SYS), msg("user", _U1)], True)
    closed = render([msg("system", _SYS), msg("user", _U1), msg("assistant", _A1)], False)
    two = render([msg("system", _SYS), msg("user", _U1), msg("assistant", _A1), msg("user", _U2)], True)
    try:
        before_sys, rest = one.split(_SYS)
        sys_to_user, after_user = rest.split(_U1)
        assistant_end = closed.split(_A1)[1]
        _, rest2 = two.split(_A1)
        assistant_end_to_user2, after_user2 = rest2.split(_U2)
    except (ValueError, IndexError) as exc:
        raise BackendError(f"could not split the chat template into pieces: {exc}") from exc
    if after_user != after_user2 or not assistant_end_to_user2.startswith(assistant_end):
        raise BackendError("the chat template closes the first and later user turns differently")
    user_prefix = assistant_end_to_user2[len(assistant_end) :]
    esc = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
    sink = esc(before_sys) + "{system}" + esc(sys_to_user)
    first_q = "{q}" + esc(after_user)
    next_q = esc(user_prefix) + "{q}" + esc(after_user)
    return ChatFormat(
        sink_template=sink,
        first_question=first_q,
        next_question=next_q,
        assistant_end=assistant_end,
        stop_strings=stop_strings,
    )

