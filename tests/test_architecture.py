"""The dependency rules of docs/design.md, enforced: the import-linter contracts in
pyproject.toml must all be kept. A second check proves the harness can fail: a copy of
the configuration with one contract the code does break must be reported broken.
(Run as a subprocess: import-linter prints through its own console.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _lint(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT_IMPORTS, "--config", str(config), "--no-cache"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_import_contracts_are_kept() -> None:
    result = _lint(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 10 kept, 0 broken." in result.stdout, result.stdout


def test_a_broken_contract_fails_the_check(tmp_path: Path) -> None:
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
    result = _lint(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Deliberately broken: servicers without stubs BROKEN" in result.stdout, result.stdout
    assert "server.api.federation_servicer -> fedsecure.proto.v1" in result.stdout, result.stdout


def test_no_framework_module_is_exempt_from_the_task_contract() -> None:
    """The framework (core, client SDK, server, key holder) imports no task, with no
    exceptions listed (issue 25: the list of modules still wired to easy-VQA emptied)."""
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in doc["tool"]["importlinter"]["contracts"] if "imports no task" in c["name"])
    assert set(contract["source_modules"]) == {"fedsecure", "client_sdk", "server", "keyholder"}
    assert contract["forbidden_modules"] == ["tasks"] and not contract.get("ignore_imports")


def test_the_framework_names_no_task() -> None:
    """Not even in a docstring: the core, client SDK, server and key holder say nothing of
    easy-VQA (issue 25's target); a task is one package behind :class:`fedsecure.task.Task`."""
    import re

    pattern = re.compile(r"easy[-_ ]?vqa", re.IGNORECASE)
    named = [str(path.relative_to(ROOT)) for side in ("fedsecure", "client_sdk", "server", "keyholder")
             for path in sorted((ROOT / side).rglob("*.py")) if pattern.search(path.read_text(encoding="utf-8"))]
    assert named == []
