"""Each command loads only its own side (issue 25 item 4): the key holder runs none of the
server's or a client's code, so neither it nor the operator's admin commands may pull in
torch, transformers or Opacus — not through their own imports, nor through another
command's options being built, nor through another command's configuration schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "opacus")

# Run in a fresh interpreter: the test process itself has torch loaded already.
PROBE = """
import json, sys
from apps.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
import keyholder.cli, keyholder.service, keyholder.keys, fedsecure.admin_client, fedsecure.privacy.heads_export
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("argv", [["keyholder", "--help"], ["keyholder-keygen", "--help"], ["admin", "--help"],
                                  ["--help"]])
def test_the_key_holder_and_admin_commands_load_no_ml_library(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "usage: fedsecure" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_a_command_still_gets_its_own_options_and_the_full_parser_has_every_one() -> None:
    from apps.cli import SIDE_OPTIONS, build_parser, subcommand_parser

    only = build_parser(command="keyholder")
    assert "--quorum" in subcommand_parser(only, "keyholder").format_help()
    assert "--local-steps" not in subcommand_parser(only, "server").format_help()  # listed, not built
    full = build_parser()
    for name in SIDE_OPTIONS:
        assert len(subcommand_parser(full, name)._actions) > 1, name  # more than --help
