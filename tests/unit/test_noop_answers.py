"""The no-op path's shortcuts give exactly the answers of the slow path they replace."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import pytest

from rolebake.provision import collection_versions as cv

# The pattern as it was before the lookahead and the prefilter: the reference.
_REFERENCE = re.compile(
    r"(?:\|\s*|\b(?:lookup|query|q)\(\s*['\"])"
    r"([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)\.[a-z_][a-z0-9_]*")


def reference(text: str) -> set[str]:
    return {m.group(1) for m in _REFERENCE.finditer(text)
            if m.group(1) not in ("ansible.builtin", "ansible.legacy")}


TRICKY = [
    "", "plain text, no filter", "{{ x | acme.tools.shout }}", "{{ x|acme.tools.shout }}",
    "{{ x |\n\t acme.tools.shout }}", "{{ lookup('acme.tools.x') }}",
    '{{ query( "acme.tools.x", 1) }}', "{{ q('acme.tools.x') }}", "{{ xq('acme.tools.x') }}",
    "{{ seq('acme.tools.x') }}", "{{ lookup ('acme.tools.x') }}", "| a.b.lookup('x.y.z')",
    "{{ x | ansible.builtin.to_json }}", "{{ x | ansible.legacy.foo | c.d.e }}",
    "| Acme.tools.x", "| acme.Tools.x", "| acme.tools", "| acme.tools.", "| acme.tools.9x",
    "| a.b.c | a.b.c | e.f.g", "||a.b.c", "|\u00a0a.b.c", "lookup(\u00a0'a.b.c')",
    "q(q('a.b.c'))", "lookup('q(\"a.b.c\")')", "x = y | z  # python", "def q(x): return x",
    "é | ü.b.c | a.b.c", "lookup('a.b.c", "query('a_1.b_2._c')",
]


@pytest.mark.parametrize("text", TRICKY)
def test_named_in_text_matches_the_reference(text: str) -> None:
    assert cv.named_in_text(text) == reference(text)


def test_named_in_text_matches_the_reference_on_random_text() -> None:
    pieces = ["|", " ", "\n", "lookup(", "query(", "q(", "'", '"', "a", "b.", "c.d", ".e",
              "x", "_", "9", "A", "é", "(", "ansible.builtin.", "qq", "\u00a0"]
    rng = random.Random(19)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert cv.named_in_text(text) == reference(text), text


def test_named_in_file_matches_the_reference_on_installed_files() -> None:
    # Real files of every kind: the collections and the ansible package rolebake runs with.
    root = next(Path(p) for p in sys.path if (Path(p) / "ansible_collections").is_dir())
    files = sorted(p for p in (root / "ansible_collections" / "community" / "docker").rglob("*")
                   if p.is_file())[:400]
    assert files
    for path in files:
        text = path.read_bytes()[:cv.SCAN_LIMIT].decode("utf-8", errors="replace")
        assert cv.named_in_file(path) == reference(text), path
