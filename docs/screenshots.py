"""Retake the README's screenshots from a running `wtb ui` (after `wtb bench demo`).

.venv/bin/wtb bench demo && .venv/bin/wtb ui --port 3333 &
python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright   # drives Debian's chromium
/tmp/pw/bin/python docs/screenshots.py docs
"""

import contextlib
import sys

from playwright.sync_api import Page, sync_playwright

BASE = "http://127.0.0.1:3333"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"]
COMPARISON = "/assets/comparison_matrix?view=events&partition=demo"


def open_page(browser, path: str, width: int, height: int) -> Page:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(BASE + path)
    page.wait_for_timeout(4000)
    with contextlib.suppress(Exception):  # the first-visit newsletter dialog
        page.get_by_role("button", name="Skip").click(timeout=1500)
    page.wait_for_timeout(1000)
    return page


def main(out: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        open_page(browser, "/asset-groups", 1600, 900).screenshot(path=f"{out}/asset_graph.png")
        open_page(browser, "/runs", 2000, 1150).screenshot(path=f"{out}/runs.png")
        open_page(browser, COMPARISON, 1900, 1150).screenshot(
            path=f"{out}/comparison_matrix_tables.png"
        )
        check = open_page(browser, "/assets/comparison_matrix?view=checks", 1600, 1300)
        check.get_by_text("no_regression_vs_baseline").first.click()
        check.wait_for_timeout(2000)
        table = check.get_by_text("regressed_table").first.bounding_box()
        bottom = int(table["y"] + 150) if table else 1300  # the failing combos' table
        check.screenshot(path=f"{out}/regression_check.png", clip=_clip(1600, bottom))
        page = open_page(browser, COMPARISON, 1600, 1000)
        page.get_by_text("plot_file").first.scroll_into_view_if_needed()
        row = page.locator("tr", has=page.get_by_text("plot", exact=True)).first
        row.get_by_text("[Show Markdown]").click()
        page.wait_for_timeout(1500)
        page.screenshot(path=f"{out}/comparison_matrix_plot.png")
        browser.close()


def _clip(width: int, height: int) -> dict[str, int]:
    return {"x": 0, "y": 0, "width": width, "height": height}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
