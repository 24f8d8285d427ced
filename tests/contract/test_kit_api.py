"""The testing kit's public names: every one the docs and the example plugin use imports from
``autoscaler.testing``, whichever module of the package defines it."""

from __future__ import annotations

import re
from pathlib import Path

import autoscaler.testing as kit

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_exported_name_resolves() -> None:
    for name in kit.__all__:
        assert getattr(kit, name) is not None, name


def test_the_names_the_docs_use_are_exported() -> None:
    text = (DOCS / "writing-a-policy.md").read_text(encoding="utf-8")
    for example in (DOCS / "examples" / "raytide-policy-example").rglob("*.py"):
        text += example.read_text(encoding="utf-8")
    imported = {
        name.strip()
        for block in re.findall(r"from autoscaler\.testing import \(?([^)]*?)\)?\n(?!\s)", text)
        for name in block.replace("\n", ",").split(",")
        if name.strip()
    }
    mentioned = set(re.findall(r"`((?:make|check|run|random|contract|unknown|extreme)_\w+)", text))
    mentioned -= {"make_policy"}  # the method a PolicyContract subclass overrides
    mentioned |= {"FakeClock", "PolicySession", "PolicyContract", "Scenario", "default_shapes"}
    assert imported, "the docs import nothing from autoscaler.testing?"
    assert imported | mentioned <= set(kit.__all__), sorted((imported | mentioned) - set(kit.__all__))
