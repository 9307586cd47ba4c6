"""The dependency rules of docs/design.md, enforced: the import-linter contracts in
pyproject.toml must all be kept. A second check proves the harness can fail: a copy of
the configuration with one contract the code does break must be reported broken."""

from __future__ import annotations

import re
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept(capsys) -> None:  # type: ignore[no-untyped-def]
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"Contracts: 5 kept, 0 broken", out), out


def test_a_broken_contract_fails_the_check(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    # The servicers must import the generated stubs: forbidding that must be reported.
    config += '''
[[tool.importlinter.contracts]]
name = "Deliberately broken: servicers without stubs"
type = "forbidden"
source_modules = ["server.api"]
forbidden_modules = ["fedsecure.proto.v1"]
'''
    path = tmp_path / "pyproject.toml"
    path.write_text(config, encoding="utf-8")
    code = lint_imports(config_filename=str(path), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 1 and "Deliberately broken: servicers without stubs BROKEN" in out, out
    assert "server.api.federation_servicer -> fedsecure.proto.v1" in out, out
