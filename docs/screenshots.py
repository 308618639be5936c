import sys, time
from playwright.sync_api import sync_playwright
base = "http://127.0.0.1:3333"
out = sys.argv[1]
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox","--disable-gpu","--disable-quic","--disable-background-networking","--disable-component-update","--disable-sync"])
    page = b.new_page(viewport={"width": 1600, "height": 900})
    page.goto(base + "/asset-groups")
    page.wait_for_timeout(4000)
    for label in ["Skip", "Dismiss", "Got it"]:
        try:
            page.get_by_role("button", name=label).click(timeout=1500)
        except Exception:
            pass
    page.wait_for_timeout(1500)
    page.screenshot(path=f"{out}/asset_graph.png")
    page.goto(base + "/assets/comparison_matrix?view=events&partition=demo")
    page.wait_for_timeout(5000)
    page.screenshot(path=f"{out}/comparison_matrix.png", full_page=True)
    b.close()

with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox","--disable-gpu","--disable-quic","--disable-background-networking","--disable-component-update","--disable-sync"])
    page = b.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(base + "/assets/comparison_matrix?view=events&partition=demo")
    page.wait_for_timeout(4000)
    for label in ["Skip"]:
        try:
            page.get_by_role("button", name=label).click(timeout=1500)
        except Exception:
            pass
    links = page.get_by_text("[Show Markdown]")
    links.nth(0).click()
    page.wait_for_timeout(1500)
    page.screenshot(path=f"{out}/comparison_matrix_table.png")
    page.keyboard.press("Escape")
    page.wait_for_timeout(800)
    links.nth(2).click()
    page.wait_for_timeout(1500)
    page.screenshot(path=f"{out}/comparison_matrix_plot.png")
    b.close()
