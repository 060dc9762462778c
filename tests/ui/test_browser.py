"""End to end in a real browser: headless Chromium (Debian's) driven by Playwright streams its
fake camera (a Y4M clip) and its fake microphone (a WAV of real espeak speech) into the page, sees
the speech in the live transcript, asks a question in the chat and sees the answer stream in, then
its evidence: timestamps and thumbnails of the frames the answer used.

Under ``make test`` a missing Chromium fails the test; elsewhere it is installed with apt-get
when possible and the test skips (saying why) only when that fails.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests import media
from tests.ui.browser import open_tab, write_y4m_clip

from .conftest import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.network, pytest.mark.timeout(300)]

#: Records every text the first bot message shows, so the test can tell that the answer streamed.
WATCH_BOT_JS = """
() => {
  window.__botTexts = [];
  const seen = (t) => { const a = window.__botTexts; if (!a.length || a[a.length - 1] !== t) a.push(t); };
  new MutationObserver(() => {
    const bot = document.querySelector('[data-testid=bot]');
    if (bot) seen(bot.innerText);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


def _save_screenshot(page, tmp_path: Path) -> Path:
    shot = tmp_path / "livesight_page.png"
    page.screenshot(path=str(shot), full_page=True)
    extra = os.environ.get("LIVESIGHT_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(extra) / shot.name)
    return shot


def test_webcam_and_microphone_stream_transcript_chat_answer_with_evidence(speech_page, chromium_path, tmp_path):
    page = speech_page
    clip = write_y4m_clip(tmp_path / "camera.y4m")
    # the fake microphone plays this WAV (in a loop): the licence plate from 2 s, the code from 7 s
    voice = media.speech_only(tmp_path / "voice.wav", [(s.t, s.text) for s in media.SPEECH_SCRIPT])
    manager = page.manager
    with open_tab(chromium_path, page.url, camera=clip, microphone=voice) as (tab, sid):
        assert sid in manager.sessions()
        assert page.tabs.sessions() and sid in page.tabs.sessions().values()

        # the model notice is at the top (tiny-smolvlm has random weights)
        notice = tab.locator("#ls-notice")
        assert notice.is_visible() and "not meaningful" in notice.inner_text()

        # start the fake webcam and stream it to the server
        tab.get_by_role("button", name="Click to Access Webcam").click()
        tab.wait_for_function(
            "() => { const v = document.querySelector('[data-testid=webcam-video]'); return v && v.readyState >= 2; }",
            timeout=30_000)
        record = tab.get_by_role("button", name="capture photo")
        record.click()
        # and the microphone, on the same tab clock
        tab.locator("#ls-mic").get_by_role("button", name="Record").click()
        wait_until(lambda: manager.stats(sid)["ingest"]["frames_processed"] >= 4, 60, "4 webcam frames processed")
        # the session's own counters reach readers through the manager's cached snapshot, which catches
        # up within its refresh interval (frames closer together than that are refreshed afterwards)
        frames = wait_until(lambda: (manager.stats(sid).get("frames") or 0) >= 4 and manager.stats(sid)["frames"], 10,
                       "the cached session stats to count 4 frames")
        assert frames >= 4
        # the live stats on the page count them too (refreshed by the timer)
        tab.wait_for_function(
            "() => { const s = document.querySelector('#ls-stats'); if (!s) return false;"
            " const v = [...s.querySelectorAll('.ls-stat')].find(e => e.innerText.toLowerCase().includes('frames'));"
            " return v && parseInt(v.querySelector('.ls-stat-v').innerText) >= 4; }", timeout=30_000)
        # the transcript beside the video shows what the microphone heard, at its stream time
        tab.wait_for_function(
            "() => { const t = document.querySelector('#ls-transcript');"
            " return t && t.innerText.replace(/[^A-Za-z0-9]/g, '').toUpperCase().includes('PLATEISKL4'); }",
            timeout=90_000)
        lines = tab.locator("#ls-transcript li").all_inner_texts()
        # the plate's first letters, which tiny.en always hears; the spelled-out tail ("7XQ") depends on
        # where the browser's audio pieces fall, and the fake microphone loops the WAV, so the first line
        # that names the plate is the one spoken 2 s in
        plate = next(line for line in lines if media.mentions(line, "plate is KL4"))
        stamp = re.match(r"(\d\d):(\d\d(?:\.\d)?)", plate)
        assert stamp, lines
        heard_at = int(stamp.group(1)) * 60 + float(stamp.group(2))
        # spoken 2 s into the WAV, which starts playing when recording starts (within a second or two of
        # the webcam's first frame, which starts the tab's clock)
        assert 0.5 <= heard_at <= 6.0, lines
        audio = manager.stats(sid)["audio"]
        assert audio["pushed"]["chunks"] >= 4 and audio["pushed"]["errors"] == 0 and audio["committed"] >= 1
        kept = manager.kept_history(sid)
        assert len(kept) >= 4 and kept[0][1] == pytest.approx(1.0)  # the first frame is kept whole
        assert all(b[0] > a[0] for a, b in zip(kept, kept[1:]))      # stream time from the tab's clock grows

        # ask in the chat: the answer streams in, then its evidence appears in the bot message
        tab.evaluate(WATCH_BOT_JS)
        question = tab.locator("#ls-question textarea")
        question.fill("What moved across the scene?")
        question.press("Enter")
        bot = tab.locator("[data-testid=bot]").first
        bot.locator("img.ls-thumb").first.wait_for(timeout=60_000)
        texts = tab.evaluate("() => window.__botTexts")
        streaming = [t for t in texts if "▍" in t and t.replace("▍", "").strip()]
        assert streaming, f"no partial answer was shown before the final one: {texts[:5]}"
        final = bot.inner_text()
        answer_text = final.split("Evidence")[0].strip()
        assert answer_text and "▍" not in final
        assert any(len(t.replace("▍", "").strip()) < len(answer_text) for t in streaming)

        stamps = bot.locator(".ls-ts").all_inner_texts()
        assert stamps and all(re.fullmatch(r"\d\d:\d\d(\.\d)?(-\d\d:\d\d(\.\d)?)?", s) for s in stamps), stamps
        thumbs = bot.locator("img.ls-thumb")
        assert thumbs.count() >= 1
        src = thumbs.first.get_attribute("src")
        assert src.startswith("data:image/jpeg;base64,")
        # the thumbnail really decodes in the browser
        assert tab.evaluate("(img) => img.complete && img.naturalWidth > 0", thumbs.first.element_handle())
        assert manager.stats(sid)["answers"] == 1

        wait_until(lambda: tab.locator("#ls-kept-plot canvas, #ls-kept-plot svg").count() > 0, 15, "the kept-ratio plot")
        shot = _save_screenshot(tab, tmp_path)
        assert shot.stat().st_size > 10_000

        # stop the webcam and the microphone: no more frames or sound arrive
        record.click()
        tab.locator("#ls-mic").get_by_role("button", name="Stop").click()
        time.sleep(1.5)
        before = manager.stats(sid)["ingest"]["frames_submitted"]
        heard = manager.stats(sid)["audio"]["pushed"]["chunks"]
        time.sleep(1.5)
        assert manager.stats(sid)["ingest"]["frames_submitted"] == before
        assert manager.stats(sid)["audio"]["pushed"]["chunks"] == heard

        # closing the tab closes its session
        tab.close()
        wait_until(lambda: sid not in manager.sessions(), 30, "the session to close with its tab")
