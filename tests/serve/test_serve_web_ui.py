"""The Gradio page in headless Chromium: upload waterview.jpg, ask, watch the answer stream in; the
chatbot's own clear icon starts a new conversation; no "Share" icons; and, with the controller down,
a refused upload and a question each say why, as text.

Needs Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver) and the
`selenium` package; skipped with the reason when they are missing. Selenium is pointed at
/usr/bin/chromedriver, so nothing is downloaded.
"""

import json
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from llava.serve.processes import ServiceProcess, free_port
from tests.serve.stack import MODEL_A, REPO, WATERVIEW

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
USER_TEXTS = BOT_TEXTS.replace(".message.bot", ".message.user")
TOASTS = "return Array.from(document.querySelectorAll('.toast-message-text')).map(e => e.innerText.trim())"
# Gradio's bare "Error" badges: elements whose whole text is "Error"
ERROR_BADGES = (
    "return Array.from(document.querySelectorAll('*'))"
    ".filter(e => e.children.length == 0 && (e.innerText || '').trim() == 'Error').length"
)
SHARE_BUTTONS = (  # "Share" buttons one can see (and click, to get "Must be on Spaces to share")
    "return Array.from(document.querySelectorAll('button')).filter(b => b.getClientRects().length && "
    "/share/i.test((b.getAttribute('aria-label') || '') + ' ' + (b.title || ''))).length"
)
ENABLED = "return !document.querySelector('#regenerate').disabled"


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


def _open_chat(d, url):
    """Load the page until MODEL_A is selected (reload mode: asked of the controller at load)."""
    from selenium.webdriver.common.by import By

    d.get(url)
    _wait(
        lambda: [
            e
            for e in d.find_elements(By.CSS_SELECTOR, "#model_selector input")
            if e.get_attribute("value") == MODEL_A
        ],
        30,
        "the model to be selected",
    )


def _set_max_tokens(d, n: int) -> None:
    """Open Parameters and type `n` into the max-output-tokens slider's number box."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d.find_element(By.CSS_SELECTOR, "#parameters button").click()
    box = _wait(
        lambda: [
            e for e in d.find_elements(By.CSS_SELECTOR, "#max_tokens input[type=number]") if e.is_displayed()
        ],
        10,
        "slider",
    )[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(n), Keys.TAB)


def _ask(d, question: str, image=None, timeout: float = 60) -> None:
    """Upload `image` (if any), send `question`, and wait until the answer is complete."""
    from selenium.webdriver.common.by import By

    if image is not None:
        d.find_element(By.CSS_SELECTOR, "#imagebox input[type=file]").send_keys(str(image))
        _wait(lambda: d.find_elements(By.CSS_SELECTOR, "#imagebox img"), 20, "the uploaded image preview")
    d.find_element(By.CSS_SELECTOR, "#textbox textarea").send_keys(question)
    d.find_element(By.CSS_SELECTOR, "#send").click()
    _wait(lambda: not d.execute_script(ENABLED), 10, "the answer to start")
    _wait(lambda: d.execute_script(ENABLED), timeout, "the answer to finish")


def test_chat_in_headless_chromium(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    _open_chat(d, stack.web.url)

    _set_max_tokens(d, 64)  # fewer output tokens keep the test short

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

    # No "Share" icons (they work only on Hugging Face Spaces), on the chatbot or the upload box.
    assert d.execute_script(SHARE_BUTTONS) == 0

    # Regenerate answers the same question again; Clear empties the chat.
    d.find_element(By.CSS_SELECTOR, "#regenerate").click()
    _wait(lambda: not d.execute_script(ENABLED), 10, "regeneration to start")
    _wait(lambda: d.execute_script(ENABLED), 60, "regeneration to finish")
    texts = d.execute_script(BOT_TEXTS)
    assert len(texts) == 1 and texts[0], texts
    d.find_element(By.CSS_SELECTOR, "#clear").click()
    _wait(lambda: not d.find_elements(By.CSS_SELECTOR, "#chatbot .message"), 10, "the chat to be cleared")


def test_the_chatbots_trash_icon_starts_a_new_conversation(stack, browser):
    """The chatbot's own clear icon empties the conversation, not only its display: the next question
    comes without the old image and turns (they came back with it before)."""
    from selenium.webdriver.common.by import By

    d = browser
    _open_chat(d, stack.web.url)
    _set_max_tokens(d, 16)
    _ask(d, "What is in the picture?", WATERVIEW)
    _ask(d, "And the sky?")
    assert d.execute_script(USER_TEXTS)[-2:] == ["What is in the picture?", "And the sky?"]
    trash = d.find_element(By.CSS_SELECTOR, "#chatbot button[aria-label='Clear']")
    trash.click()
    _wait(lambda: not d.find_elements(By.CSS_SELECTOR, "#chatbot .message"), 10, "the chat to be cleared")
    _ask(d, "Is it raining?")
    assert d.execute_script(USER_TEXTS) == ["Is it raining?"]
    assert len(d.execute_script(BOT_TEXTS)) == 1 and not d.find_elements(By.CSS_SELECTOR, "#chatbot img")
    assert d.execute_script(SHARE_BUTTONS) == 0


@pytest.fixture(scope="module")
def lonely_web(tmp_path_factory):
    """A web server whose controller is down (nothing listens at its --controller-url)."""
    from tests.serve.conftest import child_env

    tmp = tmp_path_factory.mktemp("lonely-web")
    port, dead = free_port(), f"http://127.0.0.1:{free_port()}"
    args = ["llava.serve.gradio_web_server", "--port", str(port), "--controller-url", dead]
    args += ["--model-list-mode", "reload"]
    web = ServiceProcess.start(
        "web", "tests.serve.netguard", args, f"http://127.0.0.1:{port}", tmp, env=child_env(tmp), cwd=REPO
    )
    try:
        web.wait_ready("/", method="get", timeout=120)
        yield web, dead
    finally:
        web.stop()


def test_a_refused_upload_and_a_down_controller_are_told_as_text(lonely_web, browser, tmp_path):
    from selenium.webdriver.common.by import By

    web, dead = lonely_web
    d = browser
    d.get(web.url)
    _wait(lambda: d.find_elements(By.CSS_SELECTOR, "#imagebox input[type=file]"), 30, "the page")
    fake = tmp_path / "holiday.png"
    fake.write_text("this is a text file, not a picture")
    d.find_element(By.CSS_SELECTOR, "#imagebox input[type=file]").send_keys(str(fake))
    toast = _wait(lambda: d.execute_script(TOASTS), 20, "the reason the upload was refused")
    assert "The upload holiday.png is not a readable image" in toast[0] and "removed" in toast[0], toast
    assert d.execute_script(ERROR_BADGES) == 0, "bare 'Error' badges instead of the reason"
    assert not d.find_elements(By.CSS_SELECTOR, "#imagebox img")

    d.find_element(By.CSS_SELECTOR, "#textbox textarea").send_keys("Hello?")
    d.find_element(By.CSS_SELECTOR, "#send").click()
    said = _wait(lambda: [t for t in d.execute_script(BOT_TEXTS) if "controller" in t], 30, "the cause")
    assert said[-1].startswith(f"The controller at {dead} cannot be reached"), said
    assert "--controller-url" in said[-1] and "HIGH TRAFFIC" not in d.find_element(By.TAG_NAME, "body").text
    assert d.execute_script(ERROR_BADGES) == 0
