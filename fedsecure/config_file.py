"""Configuration files for the command line (``fedsecure server --config run.toml``,
``fedsecure client --config client.toml``): TOML sections of keys, each key standing for
one command-line option, so a run can be written down, reviewed and started again.

Why this shape: the options stay the one definition of what can be set (their types,
choices and help text); a file only supplies their values. Everything is validated when
the file is loaded — an unknown section or key, a wrong type, a value outside the
option's choices — and every error names the file, the section and the key. Flags given
on the command line override the file.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedsecure.errors import FedsecureError

ConfigSchema = Mapping[str, Mapping[str, str]]
"""section -> key -> the option's ``dest`` (e.g. ``{"run": {"quorum": "quorum"}}``)."""


class ConfigFileError(FedsecureError, ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    for action in parser._actions:  # argparse offers no public lookup by dest
        if action.dest == dest:
            return action
    raise KeyError(f"the command has no option for {dest!r}")


def _convert(action: argparse.Action, value: Any, where: str, base: Path) -> Any:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where}: expected true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(value, list):
        # A list stands for the option's comma-separated form (e.g. phases).
        if not all(isinstance(v, str) and v and "," not in v for v in value):
            raise ConfigFileError(f"{where}: expected a list of names, got {value!r}")
        value = ",".join(value)
    kind = action.type
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigFileError(f"{where}: expected an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigFileError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    elif kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigFileError(f"{where}: expected a path, got {value!r}")
        path = Path(value).expanduser()
        value = path if path.is_absolute() else base / path  # relative to the file, not to the caller
    elif not isinstance(value, str):
        raise ConfigFileError(f"{where}: expected a string, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise ConfigFileError(f"{where}: {value!r} is not one of {sorted(action.choices)}")
    return value


def load_config(path: Path, *, schema: ConfigSchema, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The option values ``path`` sets (by ``dest``), validated against ``parser``'s
    options; raises ConfigFileError naming the key of the first problem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from exc
    out: dict[str, Any] = {}
    for section, keys in data.items():
        if section not in schema:
            raise ConfigFileError(f"{path}: unknown section [{section}] (known: {', '.join(sorted(schema))})")
        if not isinstance(keys, dict):
            raise ConfigFileError(f"{path}: [{section}] must be a table of keys")
        for key, value in keys.items():
            where = f"{path}: [{section}] {key}"
            if key not in schema[section]:
                raise ConfigFileError(f"{where}: unknown key (known in [{section}]: "
                                      f"{', '.join(sorted(schema[section]))})")
            dest = schema[section][key]
            out[dest] = _convert(_action(parser, dest), value, where, path.parent.resolve())
    return out


def apply_config(parser: argparse.ArgumentParser, path: Path, schema: ConfigSchema) -> None:
    """Make the file's values ``parser``'s defaults, so flags still override them; an
    option the file sets is no longer required on the command line."""
    values = load_config(path, schema=schema, parser=parser)
    for dest in values:
        _action(parser, dest).required = False
    for group in parser._mutually_exclusive_groups:
        if any(a.dest in values for a in group._group_actions):
            group.required = False
    parser.set_defaults(**values)


def check_schema(parser: argparse.ArgumentParser, schema: ConfigSchema) -> None:
    """Raise if a schema names an option the command does not have (a test calls this
    for every command, so the documented keys never drift from the options)."""
    for section, keys in schema.items():
        for key, dest in keys.items():
            try:
                _action(parser, dest)
            except KeyError as exc:
                raise AssertionError(f"[{section}] {key} -> {dest}: {exc}") from exc
