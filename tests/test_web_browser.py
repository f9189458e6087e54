"""The web pages in a real browser: Debian's chromium, driven by selenium (headless).

A server with a few images; each page is loaded at desktop and phone widths and
screenshot (into the test's tmp directory; with ``CLOUDIMG_SCREENSHOTS=DIR`` also into
DIR: ``docs/screenshots/`` holds the desktop ones). The tests check what a person would:
the tag table and the DataVolume panel are visible, the page fits a phone's width,
typing in the filter narrows the list, the copy button copies, the keyboard reaches
the skip link first, and the browser reports no error (a script error, or anything
the Content Security Policy blocked).

Skipped, saying why, where chromium, chromedriver or selenium is missing (Debian:
``chromium chromium-driver``; PyPI: ``selenium``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, start_server, upload

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None

pytestmark = [
    pytest.mark.skipif(
        not HAVE_SELENIUM, reason="selenium is not installed (pip install selenium)"
    ),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="no chromedriver (Debian: chromium-driver)"),
    pytest.mark.slow,  # a browser start and a dozen page loads on a busy machine
]

DESKTOP = (1280, 900)
PHONE = (390, 844)
TAGS = ["20.04", "22.04", "24.04"]


@pytest.fixture(scope="module")
def browsed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with a few images (one backend: the browser sees the same pages on both)."""
    running = start_server(tmp_path_factory.mktemp("browser") / "data")
    with running.client() as http:
        # 22.04 moved once: its history holds a retained entry, with its rollback command.
        response = upload(http, "/reg/images/ubuntu/22.04", b"an earlier 22.04 build" * 100)
        assert response.status_code == 201
        for tag in TAGS:
            meta = {"os": "ubuntu", "release": tag, "arch": "amd64"}
            response = upload(http, f"/reg/images/ubuntu/{tag}", tag.encode() * 1000, meta)
            assert response.status_code == 201
        assert upload(http, "/reg/images/debian/12", b"debian", {"os": "debian"}).status_code == 201
        assert upload(http, "/reg/images/alpine/3.20", b"alpine").status_code == 201
        assert upload(http, "/reg/lab/cirros/0.6.2", b"cirros").status_code == 201
        # The same bytes under another name: the storage chart shows the deduplication.
        assert upload(http, "/reg/lab/ubuntu-mirror/22.04", b"22.04" * 1000).status_code == 201
    yield running
    running.stop()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


def visit(driver: Any, url: str, size: tuple[int, int]) -> None:
    driver.get_log("browser")  # what earlier pages logged is theirs
    driver.set_window_size(*size)
    driver.get(url)
    assert driver.execute_script("return document.readyState") == "complete"


def shoot(driver: Any, tmp_path: Path, name: str) -> None:
    """Screenshot the whole page into tmp_path (and CLOUDIMG_SCREENSHOTS when set)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, max(height + 100, 400))
    targets = [tmp_path]
    if os.environ.get("CLOUDIMG_SCREENSHOTS"):
        targets.append(Path(os.environ["CLOUDIMG_SCREENSHOTS"]))
    for directory in targets:
        directory.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(directory / f"{name}.png"))


def no_browser_errors(driver: Any) -> None:
    """No script error, nothing blocked; an error page's own status is what it is for."""
    own_status = f"{driver.current_url} - Failed to load resource"
    errors = [
        entry
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not entry["message"].startswith(own_status)
    ]
    assert errors == [], errors


def fits_the_window(driver: Any) -> bool:
    return bool(
        driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    )


# Every rendered element whose box reaches past the window's right edge, whose content
# is wider than the window, or (a snippet) whose text is wider than its box: cut off,
# or behind a sideways scroll.
_OVERFLOWING = """
const width = window.innerWidth;
const scrollsInside = arguments[0];
const found = [];
for (const element of document.querySelectorAll("body *")) {
  if (scrollsInside && element.parentElement.closest(scrollsInside)) continue;
  const box = element.getBoundingClientRect();
  if (box.width === 0 && box.height === 0) continue;
  const cut = element.tagName === "PRE" && element.scrollWidth > element.clientWidth;
  if (box.right > width + 0.5 || element.scrollWidth > width || cut) {
    found.push(`${element.tagName}#${element.id}.${element.className}: right ${box.right}, `
      + `scrollWidth ${element.scrollWidth}, clientWidth ${element.clientWidth}`);
  }
}
return found;
"""


def overflowing(driver: Any, scrolls_inside: str | None = None) -> list[str]:
    """What reaches past the right edge (not counting what is inside ``scrolls_inside``,
    a region meant to scroll sideways)."""
    return list(driver.execute_script(_OVERFLOWING, scrolls_inside))


PAGES = [
    ("repositories", "/ui/"),
    ("images", "/ui/images"),
    ("tags", "/ui/images/ubuntu"),
    ("tag", "/ui/images/ubuntu/22.04"),
    ("storage", "/ui/_storage"),
    ("query", "/ui/_query?q=os%3Dubuntu+has%3Aarch"),
    ("error", "/ui/images/ubuntu/nope"),
]


@pytest.mark.parametrize(("name", "path"), PAGES)
@pytest.mark.parametrize(("width", "size"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_each_page_renders_and_fits(
    driver: Any,
    browsed: RunningServer,
    tmp_path: Path,
    name: str,
    path: str,
    width: str,
    size: tuple[int, int],
) -> None:
    from selenium.webdriver.common.by import By

    visit(driver, browsed.base_url + path, size)
    assert driver.find_element(By.TAG_NAME, "h1").is_displayed()
    assert fits_the_window(driver), "the page scrolls sideways"
    no_browser_errors(driver)
    shoot(driver, tmp_path, f"{name}-{width}")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_long_commands_wrap_instead_of_running_off_the_edge(
    driver: Any, browsed: RunningServer, size: tuple[int, int]
) -> None:
    from selenium.webdriver.common.by import By

    visit(driver, browsed.base_url + "/ui/images/ubuntu/22.04", size)
    assert overflowing(driver) == []
    snippets = driver.find_elements(By.CSS_SELECTOR, "pre")
    assert len(snippets) >= 7  # the panel's, and the rollback command in the history
    for pre in snippets:
        assert pre.is_displayed()
        assert "sha256:" in pre.text or "blake3:" in pre.text or "DataVolume" in pre.text
    # The longest, the qemu-img command, takes more than one line, and keeps its text.
    convert = driver.find_element(By.ID, "use-qemu-convert")
    line = driver.execute_script(
        "return parseFloat(getComputedStyle(arguments[0]).lineHeight)", convert
    )
    assert convert.size["height"] > 2 * line
    assert convert.get_attribute("textContent").count("\n") == 0
    rollback = driver.find_element(By.CSS_SELECTOR, "tr.rollback pre")
    assert rollback.get_attribute("textContent").startswith("cloudimg tag --server ")
    assert driver.find_element(By.CSS_SELECTOR, "tr.rollback button[data-copy]").is_displayed()
    assert driver.find_element(By.ID, "download").is_displayed()


@pytest.mark.parametrize(("name", "path"), PAGES)
@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_nothing_reaches_past_the_right_edge(
    driver: Any, browsed: RunningServer, name: str, path: str, size: tuple[int, int]
) -> None:
    visit(driver, browsed.base_url + path, size)
    # The tag table may scroll sideways in its own region (docs/web.md); nothing else.
    assert overflowing(driver, ".table-wrap" if name == "tags" else None) == []


def test_the_column_headers_sort_the_lists(driver: Any, browsed: RunningServer) -> None:
    from selenium.webdriver.common.by import By

    visit(driver, browsed.base_url + "/ui/images", DESKTOP)

    def shown() -> list[str]:
        rows = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
        return [row.find_element(By.TAG_NAME, "th").text for row in rows]

    assert shown() == ["alpine", "debian", "ubuntu"]
    driver.find_element(By.CSS_SELECTOR, "a[data-sort='size']").click()
    assert shown() == ["ubuntu", "alpine", "debian"]  # 3 tags of 5,000 bytes; 6 and 6
    header = driver.find_element(By.CSS_SELECTOR, "th[aria-sort]")
    assert header.get_attribute("aria-sort") == "descending"
    assert "Size" in header.text
    driver.find_element(By.CSS_SELECTOR, "a[data-sort='updated']").click()
    assert shown() == ["alpine", "debian", "ubuntu"]  # uploaded last first
    no_browser_errors(driver)


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_tag_table_and_the_datavolume_are_visible(
    driver: Any, browsed: RunningServer, size: tuple[int, int]
) -> None:
    from selenium.webdriver.common.by import By

    visit(driver, browsed.base_url + "/ui/images/ubuntu", size)
    table = driver.find_element(By.TAG_NAME, "table")
    assert table.is_displayed()
    rows = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
    assert [row.find_element(By.TAG_NAME, "th").text for row in rows] == TAGS
    visit(driver, browsed.base_url + "/ui/images/ubuntu/22.04", size)
    panel = driver.find_element(By.ID, "use-datavolume")
    assert panel.is_displayed()
    assert "kind: DataVolume" in panel.text
    button = driver.find_element(By.CSS_SELECTOR, "button[data-copy='use-datavolume']")
    assert button.is_displayed()  # the script shows the copy buttons it serves


def test_typing_in_the_filter_narrows_the_list(driver: Any, browsed: RunningServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    visit(driver, browsed.base_url + "/ui/images/ubuntu", DESKTOP)

    def shown() -> list[str]:
        rows = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
        return [row.find_element(By.TAG_NAME, "th").text for row in rows if row.is_displayed()]

    assert shown() == TAGS
    driver.find_element(By.ID, "q").send_keys("22")
    assert shown() == ["22.04"]
    assert driver.current_url.endswith("/ui/images/ubuntu")  # narrowed here, no request
    assert "1 shown" in driver.find_element(By.ID, "rows-shown").text
    # Enter asks the server, which filters by name and metadata the same way.
    driver.find_element(By.ID, "q").clear()
    driver.find_element(By.ID, "q").send_keys("24\n")
    WebDriverWait(driver, 30).until(lambda d: "q=24" in d.current_url)
    assert shown() == ["24.04"]
    no_browser_errors(driver)


def test_the_copy_button_copies_the_snippet(driver: Any, browsed: RunningServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.wait import WebDriverWait

    visit(driver, browsed.base_url + "/ui/images/ubuntu/22.04", DESKTOP)
    driver.find_element(By.CSS_SELECTOR, "button[data-copy='use-url']").click()
    status = driver.find_element(By.ID, "copy-status")
    # The status is set a moment after the copy (so screen readers announce it anew).
    WebDriverWait(driver, 10).until(lambda _: status.get_attribute("textContent"))
    assert status.get_attribute("textContent") == "Copied"
    # Paste it back into an input the test adds: the clipboard holds the URL shown.
    driver.execute_script(
        "const i = document.createElement('input'); i.id = 'paste'; document.body.prepend(i);"
    )
    target = driver.find_element(By.ID, "paste")
    target.click()
    target.send_keys(Keys.CONTROL, "v")
    url = driver.find_element(By.ID, "use-url").text
    assert target.get_attribute("value") == url
    assert "/reg/images/ubuntu/sha256:" in url


def test_the_keyboard_reaches_the_skip_link_first(driver: Any, browsed: RunningServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    visit(driver, browsed.base_url + "/ui/images/ubuntu", DESKTOP)
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = driver.switch_to.active_element
    assert focused.text == "Skip to content"
    assert focused.is_displayed()  # it appears when focused
