"""The Space's page in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium): fill the
inputs, click, read both sides' outputs, check them against the backend, and keep a screenshot as a test artefact
(tests/artifacts/space.png, gitignored). Skipped where Chromium is not installed (scripts/install_browser.sh installs
it); needs gradio like tests/test_space.py."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="Chromium and chromedriver are not installed (scripts/install_browser.sh)")

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio", reason="the Space needs gradio (pip install -e '.[space]')")

from test_space import MODELS, NEXT_STATE, STATE, free_port, load_space_modules, quick_space  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,2000"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    app_module, _ = load_space_modules()
    space = quick_space(tmp_path_factory.mktemp("space-browser-cache"))
    demo = app_module.create_app(space)
    demo.queue(default_concurrency_limit=2, max_size=16)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield space, url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="swirl-space-chromium-")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def fill(driver, selector, text):
    box = css(driver, selector)
    box.clear()
    box.send_keys(text)


def open_tab(driver, label):
    from selenium.webdriver.common.by import By

    tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == label)
    tab.click()


def test_predict_and_infer_in_the_browser(served, browser):
    space, url = served
    browser.get(url)
    wait_for(browser, lambda d: d.find_elements("css selector", "#p-state textarea"))

    fill(browser, "#p-state textarea", STATE)
    fill(browser, "#p-action textarea", "wait")
    css(browser, "#p-run").click()
    wait_for(browser, lambda d: css(d, "#p-a-score input").get_attribute("value")
             and css(d, "#p-b-score input").get_attribute("value") and "simulator" in css(d, "#p-details").text)
    direct = space.predict(STATE, "wait", *MODELS, 0.0, 64)  # the page's default sampling: greedy, 64 new tokens
    assert css(browser, "#p-a-out textarea").get_attribute("value") == direct.sides["A"].output
    assert css(browser, "#p-b-out textarea").get_attribute("value") == direct.sides["B"].output
    assert float(css(browser, "#p-a-score input").get_attribute("value")) == pytest.approx(
        direct.sides["A"].score, abs=1e-3)
    assert float(css(browser, "#p-b-score input").get_attribute("value")) == pytest.approx(
        direct.sides["B"].score, abs=1e-3)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "space.png"))

    open_tab(browser, "Infer the action")
    wait_for(browser, lambda d: css(d, "#i-state textarea").is_displayed())
    fill(browser, "#i-state textarea", STATE)
    fill(browser, "#i-next textarea", NEXT_STATE)
    css(browser, "#i-run").click()
    wait_for(browser, lambda d: css(d, "#i-a-score input").get_attribute("value")
             and css(d, "#i-b-score input").get_attribute("value") and "simulator" in css(d, "#i-details").text)
    direct = space.infer(STATE, NEXT_STATE, *MODELS, 0.0, 64)
    assert css(browser, "#i-a-out textarea").get_attribute("value") == direct.sides["A"].output
    assert css(browser, "#i-b-out textarea").get_attribute("value") == direct.sides["B"].output
    browser.save_screenshot(str(ARTIFACTS / "space-infer.png"))


def test_bad_input_shows_a_message_not_a_traceback(served, browser):
    _, url = served
    browser.get(url)
    wait_for(browser, lambda d: d.find_elements("css selector", "#p-state textarea"))
    fill(browser, "#p-action textarea", "wait")  # the state stays empty
    css(browser, "#p-run").click()
    wait_for(browser, lambda d: "The state is empty" in d.find_element("tag name", "body").text, timeout=30)
    body = browser.find_element("tag name", "body").text
    assert "Traceback" not in body
    browser.save_screenshot(str(ARTIFACTS / "space-error.png"))


def test_image_prediction_in_the_browser(served, browser):
    space, url = served
    if space.image_support() is not None:
        pytest.skip(space.image_support())
    _, ss = load_space_modules()
    from test_space import IMAGE_MODELS, QUICK_IMAGE

    browser.get(url)
    wait_for(browser, lambda d: d.find_elements("css selector", "#p-state textarea"))
    open_tab(browser, "Images")
    wait_for(browser, lambda d: css(d, "#img-p-run").is_displayed())
    rows = [r for r in browser.find_elements("css selector", "tbody tr") if r.is_displayed()]
    rows[0].click()  # the first shapes example: its image and action fill the inputs
    wait_for(browser, lambda d: css(d, "#img-p-action textarea").get_attribute("value"))
    css(browser, "#img-p-run").click()
    wait_for(browser, lambda d: d.find_elements("css selector", "#img-p-a-out img")
             and d.find_elements("css selector", "#img-p-b-out img")
             and css(d, "#img-p-b-score input").get_attribute("value"))
    example = ss.image_examples(spec=QUICK_IMAGE)[0]
    assert css(browser, "#img-p-action textarea").get_attribute("value") == example["action"]
    direct = space.predict_image(example["state"], example["action"], *IMAGE_MODELS, 0.0, 6, 4)
    for side in ("a", "b"):
        shown = float(css(browser, f"#img-p-{side}-score input").get_attribute("value"))
        assert shown == pytest.approx(direct.sides[side.upper()].score, abs=1e-3)
    browser.save_screenshot(str(ARTIFACTS / "space-images.png"))
