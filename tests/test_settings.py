"""The settings models (issue 25 item 4): one dataclass per party is the single source of
its flags, configuration-file keys, defaults and the configuration reference; values are
checked when a party starts."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps.config_reference import PAGE, render
from client_sdk.settings import ClientSettings
from fedsecure.settings import add_options, config_schema, from_namespace, option, reference_table, settings_of
from keyholder.settings import KeyholderSettings
from server.settings import ServerSettings

MODELS = (ServerSettings, ClientSettings, KeyholderSettings)


@dataclass(frozen=True)
class Toy:
    """A settings model exercising every kind of field."""

    path: Path = option(help="a folder", section="a", required=True)
    count: int = option(3, help="how many", section="a", key="how_many", flag="--n")
    rate: float | None = option(help="a rate", section="b")
    name: str = option("x", help="a name", section="b", choices=("x", "y"))
    on: bool = option(False, help="a switch", section="b")
    local: str | None = option(help="local file", section="b", in_file=False)


def test_flags_defaults_and_keys_come_from_the_model() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, Toy)
    toy = from_namespace(Toy, parser.parse_args(["--path", "p", "--n", "5", "--on"]))
    assert toy == Toy(path=Path("p"), count=5, rate=None, name="x", on=True, local=None)
    assert from_namespace(Toy, parser.parse_args(["--path", "p", "--rate", "0.5"])).rate == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --path is required
    with pytest.raises(SystemExit):
        parser.parse_args(["--path", "p", "--name", "z"])  # not a choice
    assert config_schema(Toy) == {"a": {"path": "path", "how_many": "count"},
                                  "b": {"rate": "rate", "name": "name", "on": "on"}}
    table = reference_table(Toy)
    assert "| a | `how_many` | `--n` | 3 | how many |" in table
    assert "| b | — (flag only) | `--local` | — | local file |" in table


def test_a_model_field_without_an_option_or_of_another_type_is_refused() -> None:
    @dataclass(frozen=True)
    class Bare:
        x: int = 1

    @dataclass(frozen=True)
    class Listy:
        x: list = option(None, help="h", section="s")  # type: ignore[type-arg]

    @dataclass(frozen=True)
    class OnByDefault:
        x: bool = option(True, help="h", section="s")

    for cls, message in ((Bare, "not declared with option"), (Listy, "a setting is one of"),
                         (OnByDefault, "defaults to false")):
        with pytest.raises(TypeError, match=message):
            settings_of(cls)


@pytest.mark.parametrize("model", MODELS)
def test_every_party_model_builds_its_command_line(model: type) -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, model)
    flags = {s.flag for s in settings_of(model)}
    assert flags <= {a for action in parser._actions for a in action.option_strings}


def test_bad_values_are_refused_at_start_naming_the_setting() -> None:
    kit = Path("k")
    with pytest.raises(ValueError, match="quorum must be at least 1"):
        ServerSettings(kit=kit, quorum=0)
    with pytest.raises(ValueError, match="unknown phase kind 'TRAINN'"):
        ServerSettings(kit=kit, phases="trainn")
    with pytest.raises(ValueError, match="sample_rate"):
        ServerSettings(kit=kit, sample_rate=0.0)
    with pytest.raises(ValueError, match="epsilon must be positive"):
        ClientSettings(kit=kit, pairs=Path("p"), epsilon=0.0)
    with pytest.raises(ValueError, match="quorum must be at least 2"):
        KeyholderSettings(kit=kit, keys=Path("keys"), quorum=1)
    run = ServerSettings(kit=kit, rounds=2, phases="train,score").run_config()
    assert run is not None and [p.kind.name for p in run.phases] == ["TRAIN", "SCORE"]
    assert ServerSettings(kit=kit).run_config() is None  # waits for `fedsecure admin start`


def test_the_configuration_reference_is_the_models_tables() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert render(page) == page, "docs/configuration.md is stale: run `python -m apps.config_reference`"
    for model in MODELS:
        assert reference_table(model) in page


def test_grpos_schedule_is_written_once() -> None:
    """The alignment job, the server's ALIGN stage and the experiment start from GRPO's one
    recipe (server.align.engine.recipe) instead of restating its numbers."""
    import dataclasses

    from benchmarks.experiment_mor import MorExperimentConfig
    from server.align.engine.job import AlignmentSettings
    from server.align.engine.recipe import GRPO_RECIPE
    from server.align.vqa_stage import VQAStageSettings

    def default(cls: type, name: str) -> object:
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    for name in ("prompts_per_step", "group_size", "learning_rate", "beta", "best_nll"):
        assert default(AlignmentSettings, name) == getattr(GRPO_RECIPE, name)
    for name in ("prompts_per_step", "group_size", "learning_rate", "best_nll"):
        assert default(MorExperimentConfig, name) == getattr(GRPO_RECIPE, name)
    for name in ("group_size", "best_nll"):
        assert default(VQAStageSettings, name) == getattr(GRPO_RECIPE, name)
    assert ServerSettings.align_learning_rate == GRPO_RECIPE.learning_rate
    assert ServerSettings.align_beta == GRPO_RECIPE.beta
    assert ServerSettings.align_best_nll == GRPO_RECIPE.best_nll
