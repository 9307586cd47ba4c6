"""The tables of docs/configuration.md, derived from each party's settings model.

``python -m apps.config_reference`` rewrites them in place (between the
``<!-- settings:PARTY -->`` markers); ``tests/test_settings.py`` fails when the page and
the models differ, so the reference cannot drift from the flags and keys."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from fedsecure.settings import reference_table

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
# party -> its settings model ("module:class"), imported only here (each loads its side)
MODELS = {"server": "server.settings:ServerSettings", "client": "client_sdk.settings:ClientSettings",
          "keyholder": "keyholder.settings:KeyholderSettings"}


def tables() -> dict[str, str]:
    """party -> the Markdown table of its settings."""
    import importlib

    out = {}
    for party, path in MODELS.items():
        module, _, name = path.partition(":")
        out[party] = reference_table(getattr(importlib.import_module(module), name))
    return out


def render(text: str) -> str:
    """``text`` (the page) with every party's table replaced by the current one; raises
    ValueError when a party's markers are missing."""
    for party, table in tables().items():
        pattern = re.compile(rf"(<!-- settings:{party} -->\n).*?(<!-- /settings:{party} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"{PAGE} has no <!-- settings:{party} --> ... <!-- /settings:{party} --> block")
        text = pattern.sub(lambda m: m.group(1) + table + m.group(2), text)
    return text


if __name__ == "__main__":
    PAGE.write_text(render(PAGE.read_text(encoding="utf-8")), encoding="utf-8")
    sys.exit(0)
