"""The page hears: through ``gradio_client`` over real HTTP, a real clip with real espeak speech in
its sound track is uploaded and played; the server reads its sound (FileSource with audio), the real
faster-whisper transcribes it, the transcript shows the words at their times, and an answer's
evidence cards show what was heard."""

from __future__ import annotations

import pytest

from tests import media

from .conftest import wait_until

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]


def test_uploaded_video_is_heard_transcribed_and_cited(speech_page, speech_media):
    from gradio_client import Client, handle_file

    client = Client(speech_page.url, verbose=False)
    try:
        status = client.predict(handle_file(str(speech_media.clip)), api_name="/play_video")
        assert "ls-error" not in status, status

        def heard_all():
            stats = client.predict(api_name="/stats")
            heard = [(s["t_start"], s["t_end"], s["text"]) for s in stats["transcript"]]
            found = [media.find_mention(heard, s.key) for s in media.SPEECH_SCRIPT]
            return (stats, found) if all(found) and stats["source_progress"]["finished"] else None

        # played at its own speed: the clip's length, then its last words
        stats, found = wait_until(heard_all, 120, "the clip's speech in the transcript")
        for sentence, (t_start, _, _) in zip(media.SPEECH_SCRIPT, found):
            assert abs(t_start - sentence.t) <= 1.0, (sentence.key, t_start)
        audio = stats["audio"]
        assert audio["speech"] and audio["source"]["chunks"] > 0 and audio["source"]["decode_errors"] == 0
        assert audio["audio_s"] == pytest.approx(media.media_duration(speech_media.clip), abs=0.5)
        assert audio["committed"] >= len(media.SPEECH_SCRIPT)

        # the chat: the answer's evidence cards show the words heard, "heard at" their time
        history, _, details = client.predict("What was the licence plate?", [], api_name="/chat")
        bot = history[-1]["content"][0]["text"]
        speech = [e for e in details["evidence"] if e["kind"] == "speech" and e["text"]]
        plate = [e for e in speech if media.mentions(e["text"], "KL47XQ")]
        assert plate, details["evidence"]
        assert 'class="ls-thumb ls-note ls-speech"' in bot and "heard at " in bot
        assert media.mentions(bot, "KL47XQ")
    finally:
        client.close()
