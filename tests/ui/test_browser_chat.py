"""The page as a user works it, in a real browser (headless Chromium driven by Playwright): a question
sent while an answer streams is queued and shown queued, then answered; text being typed in the
question box survives every streamed update; turning from the webcam tab to another source tab
stops the webcam's stream.

Under ``make test`` a missing Chromium fails the test; elsewhere it is installed with apt-get
when possible and the test skips (saying why) only when that fails.
"""

from __future__ import annotations

import time

import pytest

from tests.ui.browser import open_tab, write_y4m_clip

from .conftest import launch_page, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.network, pytest.mark.timeout(600)]

#: Long answers (the tiny model never stops early), so there is time to type while one streams.
LONG_ANSWERS = {"max_new_tokens": 2000}

BOT_TEXTS_JS = "() => [...document.querySelectorAll('[data-testid=bot]')].map(b => b.innerText)"

#: Records whether any bot message ever read "queued" (however briefly).
WATCH_QUEUED_JS = """
() => {
  window.__sawQueued = false;
  new MutationObserver(() => {
    if ([...document.querySelectorAll('[data-testid=bot]')].some(b => b.innerText.includes('queued'))) window.__sawQueued = true;
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


@pytest.fixture(scope="module")
def long_page(ui_backend, page_env):
    with launch_page(ui_backend, session=LONG_ANSWERS) as server:
        yield server


def test_queued_question_typing_kept_and_webcam_stops_when_its_tab_is_left(long_page, chromium_path, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    manager = long_page.manager
    clip = write_y4m_clip(tmp_path / "camera.y4m")
    with open_tab(chromium_path, long_page.url, camera=clip) as (tab, sid):
        # a question before anything was watched: said so at once, no answer generated
        box = tab.locator("#ls-question textarea")
        box.fill("What do you see?")
        box.press("Enter")
        tab.wait_for_function(f"() => ({BOT_TEXTS_JS})().some(t => t.includes('Nothing watched yet'))",
                              timeout=30_000)
        assert manager.stats(sid)["answers"] == 0

        tab.get_by_role("button", name="Click to Access Webcam").click()
        tab.wait_for_function(
            "() => { const v = document.querySelector('[data-testid=webcam-video]'); return v && v.readyState >= 2; }",
            timeout=30_000)
        record = tab.get_by_role("button", name="capture photo")
        record.click()
        wait_until(lambda: manager.stats(sid)["ingest"]["frames_processed"] >= 2, 60, "2 webcam frames processed")

        # the first question streams a long answer
        tab.evaluate(WATCH_QUEUED_JS)
        box.fill("What moved across the scene?")
        box.press("Enter")
        tab.wait_for_function(f"() => ({BOT_TEXTS_JS})().some(t => t.includes('▍') && t.replace('▍', '').trim())",
                              timeout=60_000)
        assert tab.evaluate(BOT_TEXTS_JS)[-1].count("▍") == 1  # still streaming
        # typing while it streams: every keystroke stays, through many streamed updates
        box.press_sequentially("And after the cut?", delay=20)
        assert "▍" in tab.evaluate(BOT_TEXTS_JS)[-1], "the first answer ended before the test could type"
        assert box.input_value() == "And after the cut?"
        # sent while the first answer streams: queued, shown queued, not lost
        box.press("Enter")
        tab.wait_for_function("() => window.__sawQueued", timeout=30_000)
        assert box.input_value() == ""
        box.press_sequentially("a draft", delay=20)

        # both answers come, in order; the draft was never erased
        try:
            tab.wait_for_function(
                f"() => {{ const t = ({BOT_TEXTS_JS})(); return t.length >= 3 && t.every(x => !x.includes('▍') "
                "&& !x.includes('queued')); }", timeout=400_000)
        except PlaywrightTimeout:
            shown = [t[:80] + " … " + t[-80:] for t in tab.evaluate(BOT_TEXTS_JS)]
            raise AssertionError(f"the answers did not both finish: {shown}; stats {manager.stats(sid)}") from None
        assert manager.stats(sid)["answers"] == 2
        users = tab.locator("[data-testid=user]").all_inner_texts()
        assert [u.strip() for u in users][-2:] == ["What moved across the scene?", "And after the cut?"]
        assert box.input_value() == "a draft"

        # turning to the video-file tab stops the webcam's stream in the browser
        assert "stop" in record.inner_text().lower()
        tab.get_by_role("tab", name="Video file").click()
        tab.wait_for_function(
            "() => { const b = document.querySelector('#ls-webcam button.capture-button');"
            " return !b || !/stop/i.test(b.innerText || ''); }", timeout=15_000)
        time.sleep(1.5)  # frames already sent arrive; then nothing more
        before = manager.stats(sid)["ingest"]["frames_submitted"]
        time.sleep(2.0)
        assert manager.stats(sid)["ingest"]["frames_submitted"] == before
        assert long_page.tabs.tab(sid).webcam_left
        tab.get_by_role("tab", name="Webcam").click()
        wait_until(lambda: not long_page.tabs.tab(sid).webcam_left, 10, "the webcam tab to count as shown again")
