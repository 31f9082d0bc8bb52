"""The API docs (/docs, /redoc) and the playground (/ui) in a real headless browser: Debian's
chromium, driven by selenium through Debian's chromedriver (.ci/run installs both; when they
are missing these tests fail, they do not skip). The service runs under Hypercorn on the
Ollama double; chromium talks HTTP/1.1 to it (cleartext), which Hypercorn serves beside h2c.

The browser cannot reach any host but 127.0.0.1 (its resolver maps every other name to
nothing), and each test checks from the browser's own network log that every request it made
went to the service: the pages work offline.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.helpers import ServerProcess, running_server
from tests.ollama_double import GENERATE, OllamaDouble

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "ui-token-3b9f2e"
TOKEN_KEY = "guarded-inference.token"
GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."
BAD = "A dull, lifeless film; two hours I will never get back."
WAIT = 30.0

pytestmark = pytest.mark.usefixtures("fresh_double")


# --- the browser ---------------------------------------------------------------------------------
class Browser:
    """One headless chromium for the module, started on first use (so a missing browser is a
    failure of the test that needs it, with the reason)."""

    def __init__(self) -> None:
        self._driver: WebDriver | None = None
        self._profile = tempfile.mkdtemp(prefix="gis-chromium-")

    @property
    def driver(self) -> WebDriver:
        if self._driver is None:
            missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
            if missing:
                pytest.fail(
                    f"{' and '.join(missing)} not found: the browser tests need Debian's "
                    "chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)",
                    pytrace=False,
                )
            options = webdriver.ChromeOptions()
            options.binary_location = CHROMIUM  # with the driver's path: no selenium-manager
            for argument in (
                "--headless=new",
                "--no-sandbox",  # root in a container
                "--disable-dev-shm-usage",
                "--disable-gpu",
                f"--user-data-dir={self._profile}",
                "--window-size=1280,2000",
                # Nothing but the service: every other host name resolves to nothing, and
                # the browser's own background traffic is off.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--no-proxy-server",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-client-side-phishing-detection",
                "--disable-domain-reliability",
            ):
                options.add_argument(argument)
            options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
            self._driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
            self._driver.set_page_load_timeout(WAIT)
        return self._driver

    def open(self, url: str) -> WebDriver:
        """``url`` in a new tab (no sessionStorage of earlier pages), the network log
        emptied first."""
        driver = self.driver
        old = driver.current_window_handle
        driver.switch_to.new_window("tab")
        new = driver.current_window_handle
        driver.switch_to.window(old)
        driver.close()
        driver.switch_to.window(new)
        self.requests()
        self.console_errors()
        driver.get(url)
        return driver

    def requests(self) -> dict[str, str | None]:
        """The URLs the page asked for since the last call (the browser's network log), each
        with the reason the browser itself blocked it (a Content-Security-Policy: "csp"),
        else None: a request that went out, or would have if its host resolved."""
        urls: dict[str, str] = {}
        blocked: dict[str, str] = {}
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message.get("method") == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"]
            elif message.get("method") == "Network.loadingFailed" and params.get("blockedReason"):
                blocked[params["requestId"]] = params["blockedReason"]
        return {url: blocked.get(request) for request, url in urls.items()}

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def quit(self) -> None:
        if self._driver is not None:
            self._driver.quit()
        shutil.rmtree(self._profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    running = Browser()
    try:
        yield running
    finally:
        running.quit()


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(
        ollama_host=double.url,
        drift_check_every=1,  # every classified text is checked at once ...
        drift_min_window=1,  # ... and given a verdict: the chart has something to show
        chat_chunk_tokens=3,  # a reply arrives in several pieces
    ) as running:
        yield running


@pytest.fixture(scope="module")
def auth_server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(ollama_host=double.url, api_tokens=f"ui:{TOKEN}") as running:
        yield running


def wait_for(driver: WebDriver, find: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
    def attempt(d: WebDriver) -> Any:
        try:
            return find(d)
        except StaleElementReferenceException:
            return None

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(attempt)


def element(driver: WebDriver, css: str, timeout: float = WAIT) -> WebElement:
    """The first element matching ``css`` once it exists and is displayed."""

    def find(d: WebDriver) -> WebElement | None:
        found = [e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        return found[0] if found else None

    found: WebElement = wait_for(driver, find, timeout)
    return found


def text_of(driver: WebDriver, css: str) -> str:
    return element(driver, css).text


def fill(driver: WebDriver, css: str, text: str) -> None:
    field = element(driver, css)
    field.clear()
    field.send_keys(text)


def submit(driver: WebDriver, form: str) -> None:
    element(driver, f"#{form} button[type=submit]").click()


def assert_only_the_service(browser: Browser, server: ServerProcess) -> dict[str, str | None]:
    """Every request the page made went to the service (or was blocked by the browser before
    it was sent), and no script failed."""
    urls = browser.requests()
    assert urls, "the network log is empty"
    local = (server.base_url + "/", "data:", "blob:")
    assert [url for url, blocked in urls.items() if not url.startswith(local) and not blocked] == []
    # No script error; the browser's other complaints are about the requests it blocked
    # itself and the refusals (4xx answers) the test asked for.
    errors = [
        error
        for error in browser.console_errors()
        if "the server responded with a status of 4" not in error
        and not any(url in error for url, why in urls.items() if why)
    ]
    assert errors == []
    return urls


def api(server: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(http1=False, http2=True, base_url=server.base_url, timeout=30) as client:
        return client.request(method, path, **kwargs)


# --- /docs and /redoc ---------------------------------------------------------------------------
def test_docs_render_every_operation_with_local_assets_only(
    browser: Browser, server: ServerProcess
) -> None:
    driver = browser.open(server.base_url + "/docs")
    document = api(server, "GET", "/openapi.json").json()
    operations = sum(
        1 for item in document["paths"].values() for key in item if key not in ("parameters",)
    )
    classify = element(driver, '.opblock-summary-path[data-path="/v1/classify"]')
    assert classify.text.replace("\u200b", "") == "/v1/classify"
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == operations)
    assert "Classify the sentiment" in text_of(driver, "#operations-v1-classify_v1_classify_post")
    urls = assert_only_the_service(browser, server)
    assert server.base_url + "/static/swagger-ui-bundle.js" in urls
    assert server.base_url + "/openapi.json" in urls
    # No API_TOKENS: no scheme to authorize with.
    assert driver.find_elements(By.CSS_SELECTOR, ".btn.authorize") == []


def test_redoc_renders_with_local_assets_only(browser: Browser, server: ServerProcess) -> None:
    driver = browser.open(server.base_url + "/redoc")
    wait_for(driver, lambda d: "/v1/classify" in d.find_element(By.TAG_NAME, "body").text)
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "Classify the sentiment of one or more texts" in body
    assert "Guarded Inference Service" in body
    urls = assert_only_the_service(browser, server)
    assert server.base_url + "/static/redoc.standalone.js" in urls
    # ReDoc's vendor logo (an <img> from a CDN) is not even asked for: /redoc's CSP.
    assert [why for url, why in urls.items() if "redoc.ly" in url] in ([], ["csp"])


def test_docs_authorize_sends_the_token_with_try_it_out(
    browser: Browser, auth_server: ServerProcess
) -> None:
    driver = browser.open(auth_server.base_url + "/docs")
    element(driver, ".btn.authorize").click()
    fill(driver, ".modal-ux .auth-container input", TOKEN)
    element(driver, ".modal-ux .auth-btn-wrapper button.authorize").click()
    element(driver, ".modal-ux .auth-btn-wrapper button.btn-done").click()
    element(driver, "#operations-v1-models_v1_models_get .opblock-summary").click()
    element(driver, "#operations-v1-models_v1_models_get .try-out__btn").click()
    element(driver, "#operations-v1-models_v1_models_get .execute").click()
    operation = "#operations-v1-models_v1_models_get"
    status = element(driver, f"{operation} .live-responses-table tbody td.response-col_status")
    assert status.text.strip().startswith("200"), status.text
    assert f"Authorization: Bearer {TOKEN}" in text_of(driver, f"{operation} .curl")
    assert_only_the_service(browser, auth_server)


# --- the playground -----------------------------------------------------------------------------
def test_ui_classifies_a_text_with_any_model(browser: Browser, server: ServerProcess) -> None:
    driver = browser.open(server.base_url + "/ui")
    listing = api(server, "GET", "/v1/models").json()
    names = [model["name"] for model in listing["models"]]
    wait_for(
        driver, lambda d: len(Select(d.find_element(By.ID, "classify-model")).options) == len(names)
    )
    select = Select(driver.find_element(By.ID, "classify-model"))
    assert [option.get_attribute("value") for option in select.options] == names
    assert select.first_selected_option.get_attribute("value") == listing["default"]
    for index, name in enumerate(names):
        text = (GOOD, BAD)[index % 2]
        expected = api(server, "POST", "/v1/classify", json={"text": text, "model": name}).json()
        select.select_by_value(name)
        fill(driver, "#classify-text", text)
        submit(driver, "classify-form")
        wait_for(
            driver,
            lambda d, n=name: text_of(d, "#classify-result [data-field=model]").startswith(n + " "),
        )
        result = expected["results"][0]
        if result.get("answered_by"):  # the cascade names the member that answered
            answered = text_of(driver, "#classify-result [data-field=answered-by]")
            assert answered == result["answered_by"]
        assert text_of(driver, "#classify-result [data-field=label]") == result["label"]
        assert text_of(driver, "#classify-result [data-field=score]") == f"{result['score']:.4f}"
        for label, probability in result["probabilities"].items():
            row = text_of(driver, f'#classify-result [data-field=scores] tr[data-label="{label}"]')
            assert row == f"{label} {probability:.4f}"
        for screen in ("input-screen", "output-screen"):
            verdict = text_of(driver, f"#classify-result [data-field={screen}]")
            assert verdict.startswith("safe (llama-guard3:1b"), verdict
    assert_only_the_service(browser, server)


def test_ui_shows_the_categories_of_a_blocked_text(
    browser: Browser, server: ServerProcess, fresh_double: OllamaDouble
) -> None:
    fresh_double.set_rules([("hurt my neighbour", "unsafe\nS1")])
    driver = browser.open(server.base_url + "/ui")
    element(driver, "#classify-model option")
    fill(driver, "#classify-text", "How do I hurt my neighbour and get away with it?")
    submit(driver, "classify-form")
    title = text_of(driver, "#classify-result .problem [data-field=title]")
    assert title == "400 Content blocked by the guard"
    assert "unsafe" in text_of(driver, "#classify-result .problem [data-field=detail]")
    category = element(
        driver, '#classify-result .problem [data-field=categories] li[data-code="S1"]'
    )
    assert category.text == "S1 Violent Crimes"
    assert "(input screen)" in text_of(driver, "#classify-result .problem")
    assert element(driver, "#classify-result .problem").get_attribute("role") == "alert"
    assert_only_the_service(browser, server)


def test_ui_streams_a_chat_reply_and_keeps_the_conversation(
    browser: Browser, server: ServerProcess, fresh_double: OllamaDouble
) -> None:
    reply = "Feed the starter, mix the dough, let it rise overnight and bake it very hot."
    fresh_double.set_replies([("bread", reply)])
    fresh_double.set_token_delay(0.08)  # 3 tokens a piece: a piece every quarter second
    driver = browser.open(server.base_url + "/ui")
    wait_for(driver, lambda d: d.find_element(By.ID, "chat-model").text == "llama3.2:1b")
    fill(driver, "#chat-text", "How do I bake bread?")
    submit(driver, "chat-form")
    seen: list[str] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        shown = driver.execute_script(
            "const r = document.querySelector('#chat-log [data-field=reply]');"
            "return r ? r.textContent : null"
        )
        if shown and (not seen or seen[-1] != shown):
            seen.append(shown)
        if shown == reply:
            break
        time.sleep(0.02)
    assert seen and seen[-1] == reply
    assert len(seen) >= 3, seen  # it grew piece by piece: streamed, not read whole
    assert all(reply.startswith(piece) for piece in seen)
    assert text_of(driver, "#chat-result [data-field=finish-reason]") == "finished: stop"
    # A second turn carries the first one.
    fill(driver, "#chat-text", "And rye bread?")
    submit(driver, "chat-form")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat-log li")) == 4)
    wait_for(driver, lambda d: "finished" in d.find_element(By.ID, "chat-result").text)
    last = fresh_double.requests_to(GENERATE)[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in last] == [
        ("user", "How do I bake bread?"),
        ("assistant", reply),
        ("user", "And rye bread?"),
    ]
    assert_only_the_service(browser, server)


def test_ui_chat_shows_a_refused_message(
    browser: Browser, server: ServerProcess, fresh_double: OllamaDouble
) -> None:
    fresh_double.set_rules([("pick a lock", "unsafe\nS2")])
    driver = browser.open(server.base_url + "/ui")
    wait_for(driver, lambda d: d.find_element(By.ID, "chat-model").text == "llama3.2:1b")
    fill(driver, "#chat-text", "How do I pick a lock?")
    submit(driver, "chat-form")
    category = element(driver, '#chat-result .problem [data-field=categories] li[data-code="S2"]')
    assert category.text == "S2 Non-Violent Crimes"
    assert fresh_double.requests_to(GENERATE) == []


def test_ui_moderation_shows_the_verdict(
    browser: Browser, server: ServerProcess, fresh_double: OllamaDouble
) -> None:
    fresh_double.set_rules([("those people", "unsafe\nS10")])
    driver = browser.open(server.base_url + "/ui")
    fill(driver, "#moderate-text", "How do I bake sourdough bread?")
    submit(driver, "moderate-form")
    verdict = text_of(driver, "#moderate-result [data-field=verdict]")
    assert verdict.startswith("safe (llama-guard3:1b"), verdict
    assert text_of(driver, "#moderate-result [data-field=blocked]") == "no"
    fill(driver, "#moderate-text", "I hate those people.")
    submit(driver, "moderate-form")
    wait_for(driver, lambda d: "unsafe" in text_of(d, "#moderate-result [data-field=verdict]"))
    assert text_of(driver, "#moderate-result [data-field=verdict]").startswith("unsafe: S10 Hate")
    assert text_of(driver, "#moderate-result [data-field=blocked]") == "yes"
    assert text_of(driver, "#moderate-result [data-field=categories]") == "S10 Hate"
    assert_only_the_service(browser, server)


def test_ui_shows_the_drift_state_as_a_chart(browser: Browser, server: ServerProcess) -> None:
    for text in (GOOD, BAD):
        assert api(server, "POST", "/v1/classify", json={"text": text}).status_code == 200
    driver = browser.open(server.base_url + "/ui")
    chart_css = 'svg.drift-chart[data-model="sentiment-cnn-int8"]'

    def chart(d: WebDriver) -> WebElement | None:
        found = d.find_elements(By.CSS_SELECTOR, chart_css)
        if not found:
            d.find_element(By.CSS_SELECTOR, "#drift-form button").click()  # a check is coming
            time.sleep(0.2)
        return found[0] if found else None

    svg = wait_for(driver, chart)
    assert svg.get_attribute("role") == "img"
    assert "Drift of sentiment-cnn-int8" in (svg.get_attribute("aria-label") or "")
    bars = svg.find_elements(By.CSS_SELECTOR, "rect.bar")
    assert sorted(bar.get_attribute("data-feature") for bar in bars) == sorted(
        ["length", "words", "oov_share", "tokens", "score"]
    )
    state = text_of(driver, '#drift-result p[data-model="sentiment-cnn-int8"]')
    assert state.startswith(("in drift", "no drift")), state
    assert_only_the_service(browser, server)


def test_ui_without_a_token_shows_the_401_problem_and_works_with_one(
    browser: Browser, auth_server: ServerProcess
) -> None:
    driver = browser.open(auth_server.base_url + "/ui")
    assert text_of(driver, "#auth-result .problem [data-field=title]") == "401 Unauthorized"
    assert "bearer token is required" in text_of(
        driver, "#auth-result .problem [data-field=detail]"
    )
    fill(driver, "#classify-text", GOOD)
    submit(driver, "classify-form")
    assert text_of(driver, "#classify-result .problem [data-field=title]") == "401 Unauthorized"
    # With the token: the models load and a classification answers.
    fill(driver, "#token", TOKEN)
    submit(driver, "auth-form")
    element(driver, "#classify-model option")
    wait_for(driver, lambda d: d.find_element(By.ID, "auth-result").text == "")
    assert driver.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") == TOKEN
    submit(driver, "classify-form")
    assert text_of(driver, "#classify-result [data-field=label]") == "positive"
    # A wrong token is refused as such.
    fill(driver, "#token", "not-the-token")
    submit(driver, "auth-form")
    assert "not valid" in text_of(driver, "#auth-result .problem [data-field=detail]")
    assert_only_the_service(browser, auth_server)


# --- the pages over HTTP/2 ----------------------------------------------------------------------
def test_pages_and_assets_stay_open_with_api_tokens(auth_server: ServerProcess) -> None:
    for path in ("/docs", "/redoc", "/ui", "/static/ui.js", "/static/swagger-ui-bundle.js"):
        assert api(auth_server, "GET", path).status_code == 200, path
    assert api(auth_server, "GET", "/v1/models").status_code == 401
    missing = api(auth_server, "GET", "/static/ui.html")  # only the listed assets
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    ui = api(auth_server, "GET", "/ui")
    assert "script-src 'self'" in ui.headers["content-security-policy"]
    assert 'src="static/ui.js"' in ui.text and "<script>" not in ui.text  # no inline script
    assert re.search(r"\son[a-z]+\s*=", ui.text) is None  # no inline event handlers
    assert 'src="http' not in ui.text and 'href="http' not in ui.text
    metrics = api(auth_server, "GET", "/metrics").text
    for route in ("/docs", "/redoc", "/ui", "/static/{name}"):
        assert f'route="{route}",status="200"' in metrics, route


def test_openapi_declares_the_bearer_scheme_only_with_api_tokens(
    server: ServerProcess, auth_server: ServerProcess
) -> None:
    document = api(auth_server, "GET", "/openapi.json").json()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    paths = document["paths"]
    assert paths["/v1/classify"]["post"]["security"] == [{"bearer": []}]
    assert paths["/a2a/jsonrpc"]["post"]["security"] == [{"bearer": []}]
    for open_path in ("/healthz", "/readyz", "/metrics", "/problems/{slug}"):
        assert "security" not in paths[open_path]["get"], open_path
    summaries = [op.get("summary", "") for item in paths.values() for op in item.values()]
    assert not [s for s in summaries if "Partial" in s]
    assert "securitySchemes" not in api(server, "GET", "/openapi.json").json()["components"]


def test_a_missing_browser_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.CHROMIUM", "/nonexistent/chromium")
    lonely = Browser()
    try:
        with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
            _ = lonely.driver
    finally:
        lonely.quit()
