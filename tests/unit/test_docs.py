"""The README a newcomer reads, and the docs site it points to."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"


def test_readme_is_short_and_names_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "make demo" in text and "make test" in text
    for command in ("rolebake init", "rolebake plan", "rolebake build", "rolebake test",
                    "rolebake parity"):
        assert command in text, command  # the five-minute path


def test_every_link_of_the_readme_leads_to_a_file() -> None:
    text = README.read_text(encoding="utf-8")
    links = [link for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
             if "://" not in link]
    assert links
    for link in links:
        assert (REPO / link).is_file(), link


def test_every_docs_page_is_in_the_site_nav() -> None:
    # mkdocs --strict (make lint) fails on a page left out; this says which, in the unit tier.
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in pages(item)]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        return []

    listed = pages(config["nav"])
    assert sorted(listed) == sorted(p.name for p in DOCS.glob("*.md"))
