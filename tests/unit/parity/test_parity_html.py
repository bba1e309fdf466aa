"""`rolebake parity --html`: the page from a recorded report, escaped, redacted, offline,
and as headless Chromium renders it (screenshot and DOM)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from parity_recorded import FIXTURES

from rolebake.redact import Redactor
from rolebake.report.html import parity_html

REPORT = FIXTURES / "parity_report.json"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-extensions", "--hide-scrollbars"]


def _recorded() -> dict[str, object]:
    data: dict[str, object] = json.loads(REPORT.read_text())
    return data


class _Text(HTMLParser):
    """The page's text and every URL-bearing attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Text:
    parser = _Text()
    parser.feed(page)
    return parser


def test_page_has_verdict_differences_chain_tests_and_timeline() -> None:
    page = parity_html(_recorded())
    text = " ".join("".join(_parse(page).text).split())
    assert text.index("parity FAILED") < text.index("Differences")
    assert "package psmisc" in text and "recommends" in text
    assert "psmisc ← (Recommends) procps ← (Depends) apache2" in text
    assert "the VM has procps: VM boot package, installed without Recommends" in text
    assert "install_recommends: false" in text
    assert "test_site_conf" in text and "failed" in text
    assert "provisioning the VM" in text and "19\u2013251 s" in text
    # The expected classes are folded.
    assert re.search(r"<details class=\"folded-expected\">\s*<summary>", page)


def test_page_is_self_contained() -> None:
    parsed = _parse(parity_html(_recorded()))
    assert parsed.urls == []
    assert not parsed.tags & {"script", "link", "img", "iframe", "object"}
    assert "http://" not in parity_html(_recorded()).replace("http-equiv", "")
    assert "https://" not in parity_html(_recorded())


def test_role_strings_are_escaped() -> None:
    page = parity_html(_recorded())
    # A managed path a role named with markup in it.
    assert "<b>site</b>" not in page
    assert "&lt;b&gt;site&lt;/b&gt;.conf" in page


def test_values_are_redacted() -> None:
    data = _recorded()
    page = parity_html(data, redact_data=Redactor(["apache2-bin"]).data)
    assert "apache2-bin" not in page and "********" in page


def test_accepted_recommends_fold_and_the_verdict_changes() -> None:
    data = _recorded()
    state = data["state"]
    assert isinstance(state, dict)
    state["accept_recommends"] = True
    before = parity_html(_recorded())
    assert "package psmisc" in before.split('id="differences"')[1].split("</table>")[0]
    page = parity_html(data)
    differences = page.split('id="differences"')[1].split("</table>")[0]
    assert "package psmisc" not in differences
    folded = page.split('<details class="folded-recommends">')[1].split("</details>")[0]
    assert "package psmisc" in folded and "install_recommends: false" in folded


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "chromium (Debian's package: make browser)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the HTML report test needs {reason} (CI=true: a failure, not a skip)")
        pytest.skip(f"needs {reason}")
    return found


def test_headless_chromium_renders_it(tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "parity.html"
    page.write_text(parity_html(_recorded()), encoding="utf-8")
    shot = tmp_path / "parity.png"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2000",
                    page.as_uri()], check=True, capture_output=True, timeout=180)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], check=True,
                         capture_output=True, text=True, timeout=180).stdout
    text = " ".join("".join(_parse(dom).text).split())
    assert "parity FAILED" in text
    assert "package psmisc" in text and "path /etc/apache2/conf-enabled/<b>site</b>.conf" in text
    assert "psmisc ← (Recommends) procps" in text
    keep = os.environ.get("ROLEBAKE_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_hints_mark_code_after_escaping() -> None:
    data = _recorded()
    state = data["state"]
    assert isinstance(state, dict)
    state["hints"] = {**state["hints"], "recommends": "set `a<b>` or <i>x</i>"}
    page = parity_html(data)
    assert "set <code>a&lt;b&gt;</code> or &lt;i&gt;x&lt;/i&gt;" in page


def test_timeline_says_per_vm_layer_snapshot_or_applied() -> None:
    data = _recorded()
    data["steps"] = {**data["steps"], "vm_layer:web": {"start": 30.0, "end": 52.0}}  # type: ignore[dict-item]
    data["vm_layers"] = [
        {"layer": "base", "source": "snapshot", "snapshot": "1f2e3d4c5b6a7980", "kept": False,
         "seconds": 0.0, "key": "sha256:aa", "note": "applied 121 s by the run that kept it"},
        {"layer": "web", "source": "applied", "snapshot": "0a1b2c3d4e5f6071", "kept": True,
         "seconds": 22.4, "key": "sha256:bb", "note": ""},
    ]
    text = " ".join("".join(_parse(parity_html(data)).text).split())
    assert "VM: web" in text and "30\u201352 s" in text
    assert ("base: from snapshot 1f2e3d4c5b6a7980 (applied 121 s by the run that kept it)"
            in text)
    assert "web: applied, kept as 0a1b2c3d4e5f6071 (22 s)" in text
    # A recorded report without VM layers (an older rolebake, or --vm ssh://) has no section.
    assert "VM layers" not in " ".join("".join(_parse(parity_html(_recorded())).text).split())
