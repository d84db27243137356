"""Take the README's screenshots of the web UI from a running worker (e.g. `vitals demo`).

    .venv/bin/python deploy/ui/screenshots.py --url http://127.0.0.1:6066 --out docs/

Writes ``ui-portfolio.png`` and ``ui-account.png``. The account shown is the
one with the most bucket changes and playbook triggers in the history among
those with a gate (or ``--account``). Drives Debian's chromium
(``deploy/ci/install-test-tools.sh`` installs it) through Playwright.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def get(url: str, token: str | None) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def pick_account(base: str, token: str | None) -> str:
    """The gated account with the busiest history (changes and triggers)."""
    best: tuple[int, str] | None = None
    listed = get(f"{base}/accounts?page_size=500&bucket=red,yellow", token)
    for item in listed["items"]:
        account = urllib.parse.quote(item["account_id"], safe="")
        if not get(f"{base}/accounts/{account}/overview", token)["gates"]:
            continue
        history = get(f"{base}/accounts/{account}/history", token)
        busy = len(history["bucket_changes"]) + len(history["playbook_triggers"])
        if best is None or busy > best[0]:
            best = (busy, item["account_id"])
    if best is None:
        raise SystemExit("no red or yellow account with a gate yet: let the demo run longer")
    return best[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:6066", help="a worker")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--account", help="the account page to show")
    parser.add_argument("--token", help="the API token, if reads need it")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    account = args.account or pick_account(base, args.token)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1320, "height": 900})
        if args.token:
            page.goto(f"{base}/ui/")
            page.fill("#token-input", args.token)
            page.click("#token-form button[type=submit]")
        page.goto(f"{base}/ui/?page_size=25")
        page.wait_for_selector("#accounts tbody tr[data-account]")
        page.screenshot(path=str(args.out / "ui-portfolio.png"), full_page=True)
        page.goto(f"{base}/ui/account.html?id={urllib.parse.quote(account, safe='')}")
        page.wait_for_selector("#history svg.history-chart")
        page.screenshot(path=str(args.out / "ui-account.png"), full_page=True)
        browser.close()
    print(json.dumps({"account": account, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
