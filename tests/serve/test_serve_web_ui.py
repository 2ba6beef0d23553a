"""The Gradio page in headless Chromium: upload waterview.jpg, ask, watch the answer stream in.

Needs Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver) and the
`selenium` package; skipped with the reason when they are missing. Selenium is pointed at
/usr/bin/chromedriver, so nothing is downloaded.
"""

import json
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.serve.stack import MODEL_A, WATERVIEW

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="headless browser test needs Debian's chromium + chromium-driver (apt-get install chromium chromium-driver)",
    ),
]

BOT_TEXTS = (
    "return Array.from(document.querySelectorAll('#chatbot .message.bot')).map(e => e.innerText.trim())"
)


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="needs the selenium package (pip install selenium)"
    )
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1100",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_chat_in_headless_chromium(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(stack.web.url)
    # reload mode: the page asks the controller for the models at load time.
    _wait(
        lambda: [
            e
            for e in d.find_elements(By.CSS_SELECTOR, "#model_selector input")
            if e.get_attribute("value") == MODEL_A
        ],
        30,
        "the model to be selected",
    )

    # Fewer output tokens keep the test short: open Parameters and set the slider's number box.
    d.find_element(By.CSS_SELECTOR, "#parameters button").click()
    box = _wait(
        lambda: [
            e for e in d.find_elements(By.CSS_SELECTOR, "#max_tokens input[type=number]") if e.is_displayed()
        ],
        10,
        "slider",
    )[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("64", Keys.TAB)

    d.find_element(By.CSS_SELECTOR, "#imagebox input[type=file]").send_keys(str(WATERVIEW))
    _wait(lambda: d.find_elements(By.CSS_SELECTOR, "#imagebox img"), 20, "the uploaded image preview")
    d.find_element(By.CSS_SELECTOR, "#textbox textarea").send_keys("What is in the picture?")
    d.find_element(By.CSS_SELECTOR, "#send").click()

    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        texts = d.execute_script(BOT_TEXTS)
        if texts and texts[-1] and (not seen or seen[-1] != texts[-1]):
            seen.append(texts[-1])
        if seen and d.execute_script("return !document.querySelector('#regenerate').disabled"):
            break  # the buttons come back when the answer is complete
        time.sleep(0.03)
    d.save_screenshot(str(tmp_path / "web_ui.png"))
    assert seen, "no answer appeared"
    assert len(seen) >= 2, f"the answer should grow while it streams, saw {seen}"
    assert d.execute_script("return !document.querySelector('#regenerate').disabled"), (
        "generation did not finish"
    )
    # The question and the uploaded picture are shown in the chat.
    assert "What is in the picture?" in d.find_element(By.CSS_SELECTOR, "#chatbot").text
    assert d.find_elements(By.CSS_SELECTOR, "#chatbot img")
    assert (tmp_path / "web_ui.png").stat().st_size > 10_000

    # The page fetched nothing from outside this machine.
    outside = set()
    for entry in d.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            url = urlparse(msg["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss") and url.hostname not in (
                "127.0.0.1",
                "localhost",
            ):
                outside.add(msg["params"]["request"]["url"])
    assert not outside, f"the page reached outside: {sorted(outside)}"

    # Regenerate answers the same question again; Clear empties the chat.
    enabled = "return !document.querySelector('#regenerate').disabled"
    d.find_element(By.CSS_SELECTOR, "#regenerate").click()
    _wait(lambda: not d.execute_script(enabled), 10, "regeneration to start")
    _wait(lambda: d.execute_script(enabled), 60, "regeneration to finish")
    texts = d.execute_script(BOT_TEXTS)
    assert len(texts) == 1 and texts[0], texts
    d.find_element(By.CSS_SELECTOR, "#clear").click()
    _wait(lambda: not d.find_elements(By.CSS_SELECTOR, "#chatbot .message"), 10, "the chat to be cleared")
