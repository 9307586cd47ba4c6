"""Configuration files for `fedsecure server` and `fedsecure client`: every documented key
maps to an option, values are validated on load with the key named in each error, flags
override the file, paths are relative to the file; hostile files only ever raise
ConfigFileError (hypothesis)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.cli import build_parser, config_schemas, main, subcommand_parser
from fedsecure.config_file import ConfigFileError, apply_config, check_schema, load_config
from fedsecure.settings import from_namespace
from server.settings import ServerSettings
from fedsecure.types import TaskKind

RUN = """
[server]
kit = "kits/server"
keyholder_address = "127.0.0.1:50052"

[run]
rounds = 4
quorum = 3
min_clients = 5
phases = ["train", "score", "report_ledger"]
phase_deadline_s = 120

[training]
local_steps = 30
learning_rate = 0.05

[align]
steps = 0
"""


def _parse(command: str, text: str, tmp_path: Path, *flags: str):  # type: ignore[no-untyped-def]
    path = tmp_path / f"{command}.toml"
    path.write_text(text)
    parser = build_parser()
    apply_config(subcommand_parser(parser, command), path, config_schemas()[command])
    return parser.parse_args([command, *flags])


def test_every_documented_key_is_an_option() -> None:
    parser = build_parser()
    for command, schema in config_schemas().items():
        check_schema(subcommand_parser(parser, command), schema)


def test_server_file_sets_the_run_and_flags_override_it(tmp_path: Path) -> None:
    args = _parse("server", RUN, tmp_path, "--quorum", "2")
    assert args.kit == tmp_path / "kits" / "server"  # relative to the file, and no longer required
    config = from_namespace(ServerSettings, args).run_config()
    assert config is not None
    assert (config.rounds, config.quorum, config.min_clients) == (4, 2, 5)
    assert [p.kind for p in config.phases] == [TaskKind.TRAIN, TaskKind.SCORE, TaskKind.REPORT_LEDGER]
    assert all(p.deadline_s == 120 for p in config.phases)
    assert (args.local_steps, args.learning_rate, args.align_steps) == (30, 0.05, 0)


def test_client_file_with_choices_and_switches(tmp_path: Path) -> None:
    args = _parse("client", '[client]\nkit = "/k/a"\n[data]\nkind = "text"\nsimulated_clients = "a,b"\n'
                            '[privacy]\nepsilon = 4\ninsecure_dp = true\n[scoring]\npersonalised = true\n', tmp_path)
    assert (args.kit, args.kind, args.epsilon, args.insecure_dp, args.score_personalised) == \
        (Path("/k/a"), "text", 4.0, True, True)


@pytest.mark.parametrize("text, message", [
    ("[runn]\nrounds = 1\n", "unknown section [runn]"),
    ("[run]\nquorom = 2\n", "[run] quorom: unknown key"),
    ('[run]\nquorum = "two"\n', "[run] quorum: expected an integer, got 'two'"),
    ("[run]\nquorum = true\n", "[run] quorum: expected an integer"),
    ("[run]\nsample_rate = [1]\n", "[run] sample_rate: expected a list of names"),
    ('[training]\nlearning_rate = "fast"\n', "[training] learning_rate: expected a number"),
    ("[server]\nkit = 3\n", "[server] kit: expected a path"),
    ("run = 3\n", "[run] must be a table"),
    ("[run\n", "not valid TOML"),
])
def test_bad_server_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as err:
        _parse("server", text, tmp_path)
    assert message in str(err.value) and "server.toml" in str(err.value)


def test_bad_choice_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"\[data\] kind: 'audio' is not one of"):
        _parse("client", '[data]\nkind = "audio"\n', tmp_path)
    with pytest.raises(ConfigFileError, match="cannot read it"):
        apply_config(subcommand_parser(build_parser(), "client"), tmp_path / "none.toml", config_schemas()["client"])


def test_the_command_refuses_a_bad_file_with_its_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "run.toml"
    bad.write_text("[run]\nquorom = 2\n")
    assert main(["server", "--config", str(bad)]) == 2
    assert "configuration refused" in capsys.readouterr().err


VALUES = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=20),
                   st.lists(st.text(max_size=5), max_size=3))
NAMES = st.sampled_from(["run", "server", "training", "align", "personalise", "x", "rounds", "quorum", "phases",
                         "kit", "sample_rate", "steps", "out", "max_attempts", "unknown"])


@settings(max_examples=150, deadline=None)
@given(data=st.dictionaries(NAMES, st.dictionaries(NAMES, VALUES, max_size=4), max_size=4))
def test_hostile_files_only_raise_config_errors(tmp_path_factory: pytest.TempPathFactory, data: dict) -> None:  # type: ignore[type-arg]
    path = tmp_path_factory.mktemp("cfg") / "run.toml"
    path.write_text(tomli_w.dumps(data))
    parser = subcommand_parser(build_parser(), "server")
    try:
        values = load_config(path, schema=config_schemas()["server"], parser=parser)
    except ConfigFileError:
        return
    assert set(values) <= {dest for keys in config_schemas()["server"].values() for dest in keys.values()}


def test_the_configuration_reference_examples_load_and_document_every_key(tmp_path: Path) -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert len(blocks) == 3
    for block, command in zip(blocks, ("server", "client", "keyholder"), strict=True):
        path = tmp_path / f"{command}.toml"
        path.write_text(block)
        schema = config_schemas()[command]
        values = load_config(path, schema=schema, parser=subcommand_parser(build_parser(), command))
        documented = {dest for keys in schema.values() for dest in keys.values()}
        missing = documented - set(values) - {"simulated_clients"}  # named in a comment
        assert not missing, f"docs/configuration.md's {command} example lacks {sorted(missing)}"
