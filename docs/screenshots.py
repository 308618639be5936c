"""Retake the README's screenshots from a running `dagster dev` (after `wtb bench demo`).

DAGSTER_HOME=$PWD/.dagster_home .venv/bin/dagster dev -h 127.0.0.1 -p 3333 &
python -m venv /tmp/pw && /tmp/pw/bin/pip install playwright   # drives Debian's chromium
/tmp/pw/bin/python docs/screenshots.py docs
"""

import contextlib
import sys

from playwright.sync_api import sync_playwright

BASE = "http://127.0.0.1:3333"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"]


def open_page(browser, path: str, height: int):  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1600, "height": height})
    page.goto(BASE + path)
    page.wait_for_timeout(4000)
    with contextlib.suppress(Exception):  # the first-visit newsletter dialog
        page.get_by_role("button", name="Skip").click(timeout=1500)
    page.wait_for_timeout(1000)
    return page


def main(out: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        open_page(browser, "/asset-groups", 900).screenshot(path=f"{out}/asset_graph.png")
        events = "/assets/comparison_matrix?view=events&partition=demo"
        open_page(browser, events, 900).screenshot(path=f"{out}/comparison_matrix.png")
        page = open_page(browser, events, 1000)
        links = page.get_by_text("[Show Markdown]")
        links.nth(0).click()  # the matrix table
        page.wait_for_timeout(1500)
        page.screenshot(path=f"{out}/comparison_matrix_table.png")
        page.keyboard.press("Escape")
        page.wait_for_timeout(800)
        links.nth(2).click()  # the plot
        page.wait_for_timeout(1500)
        page.screenshot(path=f"{out}/comparison_matrix_plot.png")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
