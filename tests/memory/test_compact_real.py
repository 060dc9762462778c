"""Compact rerank keys on real SmolLM2 KV, through real sessions: the rerank from the compact form
(RAM, pre-RoPE, a few bits per channel) ranks memory as the rerank over the stored keys does."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def backend():
    from app.engine.backends.registry import load_backend

    b = load_backend("smolvlm2-256m-smollm2", dtype="float32")
    yield b
    b.close()


def _probe(session, question: str):
    """The question's probe prefill, as ``Session._question`` makes it (the cache rewound after)."""
    cache = session._window.cache
    qseg = session.backend.question_segment(question, session._next_pos, first=True)
    mark = cache.length
    try:
        res, _ = session.backend.prefill(qseg, (), cache=cache, logits_to_keep=1, want_query_tokens=True)
    finally:
        cache.rewind(mark)
    return res


def test_compact_rerank_ranks_as_the_full_rerank(backend, tmp_path):
    """One real session (16-bit memory, compact keys off) banks a needle stream; its chunks are copied
    into banks that keep 8- and 4-bit compact keys with most chunks on disk; every needle question's
    probe ranks the same candidates in all of them through :func:`app.engine.retrieval.kv_ranking`."""
    from app.bench.needles import make_stream
    from app.engine.config import SessionConfig
    from app.engine.retrieval import kv_ranking, rerank_layers, rerank_pairs
    from app.engine.session import Session
    from memory import BankConfig, MemoryBank

    spec = backend.spec
    stream = make_stream(7, events=40, needles=6)
    cfg = SessionConfig(window_tokens=64, kv_bits=16, top_k=4, drop="off", text_retrieval=False,
                        retrieval_neighbours=0, dialog_max_tokens=0, retrieval_heads="upper", rerank_compact_bits=None)
    pairs = rerank_pairs(rerank_layers(spec.num_layers), spec.num_kv_heads)
    with Session(backend, cfg) as session:
        for pts, text in stream.events:
            session.ingest_text(pts, text)
        full_bank = session.bank
        assert len(full_bank) > 30
        banks = {}
        for bits in (8, 4):
            bank = MemoryBank(BankConfig(codec=full_bank.config.codec, ram_budget_bytes=4 << 20, compact_keys_bits=bits,
                                         disk_dir=str(tmp_path / f"b{bits}")), spec.summary_dim)
            bank.set_rerank_form(backend.unrotate_keys, pairs)
            for meta in full_bank.metas():
                bank.append(full_bank.get(meta.chunk_id))
            assert bank.stats().chunks_disk > 20 and bank.stats().chunks_compact == len(bank)
            banks[bits] = bank
        try:
            same = {8: 0, 4: 0}
            needle_hits = {None: 0, 8: 0, 4: 0}
            for needle in stream.needles:
                probe = _probe(session, needle.question)
                ranked = {None: kv_ranking(backend, full_bank, probe, 64, rerank=True)}
                reads = {bits: b.stats().key_reads_disk for bits, b in banks.items()}
                ranked.update({bits: kv_ranking(backend, b, probe, 64, rerank=True) for bits, b in banks.items()})
                assert all(b.stats().key_reads_disk == reads[bits] for bits, b in banks.items())  # RAM only
                top = {bits: {cid for cid, _ in r[:4]} for bits, r in ranked.items()}
                target = {m.chunk_id for m in full_bank.metas() if m.t_start <= needle.pts <= m.t_end}
                for bits in needle_hits:
                    needle_hits[bits] += bool(target & top[bits])
                for bits in same:
                    same[bits] += top[bits] == top[None]
            n = len(stream.needles)
            assert same[8] == n  # 8 bits: the full rerank's top k at every question
            assert same[4] >= n - 1  # 4 bits: at all but at most one question...
            assert needle_hits[4] >= needle_hits[None] and needle_hits[8] >= needle_hits[None]  # ...every needle kept
            assert full_bank.stats().key_reads_compact == 0
        finally:
            for b in banks.values():
                b.close()


def test_a_session_question_scores_candidates_from_ram(backend):
    """After the first question the compact forms exist for every chunk: later questions read no key from disk."""
    from app.bench.needles import make_stream
    from app.engine.config import SessionConfig
    from app.engine.session import Session

    stream = make_stream(3, events=30, needles=3)
    cfg = SessionConfig(window_tokens=64, top_k=4, drop="off", text_retrieval=False, retrieval_neighbours=0,
                        dialog_max_tokens=0, ram_budget_mb=2.0, rerank_compact_bits=4, max_new_tokens=1)
    with Session(backend, cfg) as s:
        for pts, text in stream.events:
            s.ingest_text(pts, text)
        s.answer(stream.needles[0].question)
        first = s.bank.stats()
        assert first.chunks_compact == len(s.bank) and first.bytes_compact > 0
        assert first.bytes_ram <= cfg.ram_budget_bytes
        for pts, text in [(100.0, "The lobby is quiet."), (101.0, "The garden is dim."), (102.0, "The hallway is empty.")]:
            s.ingest_text(pts, text)
        for needle in stream.needles[1:]:
            s.answer(needle.question)
        st = s.bank.stats()
        assert st.key_reads_disk == first.key_reads_disk  # no candidate's keys were read from disk
        assert st.key_reads_compact > first.key_reads_compact and st.chunks_compact == len(s.bank)
