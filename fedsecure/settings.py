"""One settings model per party: a frozen dataclass whose fields are that party's options.

Each field says, once, its type, its default, its help text, the TOML section and key a
configuration file sets it with, and (only where it differs) its flag. The command
line (:func:`add_options`), the configuration-file schema (:func:`config_schema`), the
object a side is started from (:func:`from_namespace`) and the configuration reference
in docs/configuration.md (:func:`reference_table`, checked by a test) are all derived
from it, so a setting cannot be restated with another default in a second place (issue
25 item 4; the shape follows Flower's and pydantic-settings' typed configuration, with
no dependency: argparse, dataclasses and tomllib are enough).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_OPTION = "fedsecure.option"
_SCALARS = (int, float, str, Path, bool)


@dataclass(frozen=True)
class Option:
    """What a settings field is on the command line and in a configuration file."""

    help: str
    section: str
    key: str  # the TOML key in ``section`` ("" until the field's name fills it)
    flag: str  # "" until the field's name fills it (--field-name)
    choices: tuple[str, ...] | None
    required: bool  # on the command line, unless a configuration file sets it
    in_file: bool  # settable in a configuration file (a port file is a process's, not a run's)
    one_of: str | None  # fields sharing this name are mutually exclusive


def option(default: Any = None, *, help: str, section: str, key: str = "", flag: str = "",
           choices: Iterable[str] | None = None, required: bool = False, in_file: bool = True,
           one_of: str | None = None) -> Any:
    """A settings field: its default and how it is set (see :class:`Option`)."""
    meta = Option(help=help, section=section, key=key, flag=flag, required=required, in_file=in_file,
                  choices=tuple(choices) if choices is not None else None, one_of=one_of)
    return field(default=default, metadata={_OPTION: meta})


@dataclass(frozen=True)
class Setting:
    """One field of a settings model, resolved: name, scalar type, default and option."""

    name: str
    kind: type
    default: Any
    option: Option

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        return self.option.key or self.name


def _scalar(hint: Any, where: str) -> type:
    """``int``, ``Path``, … out of ``int`` or ``int | None``; anything else is a bug."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            hint = rest[0]
    if hint not in _SCALARS:
        raise TypeError(f"{where}: a setting is one of {[t.__name__ for t in _SCALARS]} or that | None, got {hint!r}")
    return typing.cast(type, hint)


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The options of settings model ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if _OPTION not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with option()")
        kind = _scalar(hints[f.name], f"{cls.__name__}.{f.name}")
        if kind is bool and f.default is not False:
            raise TypeError(f"{cls.__name__}.{f.name}: a switch defaults to false (its flag turns it on)")
        out.append(Setting(f.name, kind, f.default, f.metadata[_OPTION]))
    return tuple(out)


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *, titles: Mapping[str, str] | None = None,
                only: Iterable[str] | None = None, required: bool = True) -> None:
    """Add ``cls``'s options to ``parser``, one argument group per section (titled by
    ``titles``; untitled sections go to the parser itself). ``only``: a subset of fields;
    ``required=False`` drops every requirement (a command that needs them only sometimes)."""
    wanted = set(only) if only is not None else None
    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    for s in settings_of(cls):
        if wanted is not None and s.name not in wanted:
            continue
        title = (titles or {}).get(s.option.section)
        target: Any = parser
        if title is not None:
            if s.option.section not in groups:
                groups[s.option.section] = parser.add_argument_group(title)
            target = groups[s.option.section]
        if s.option.one_of is not None:
            if s.option.one_of not in exclusive:
                exclusive[s.option.one_of] = target.add_mutually_exclusive_group(
                    required=required and any(o.option.required for o in settings_of(cls)
                                              if o.option.one_of == s.option.one_of))
            target = exclusive[s.option.one_of]
        kwargs: dict[str, Any] = {"dest": s.name, "help": s.option.help}
        if s.kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=s.kind, default=s.default)
            if s.option.choices is not None:
                kwargs["choices"] = s.option.choices
            if s.option.one_of is None:
                kwargs["required"] = required and s.option.required
        target.add_argument(s.flag, **kwargs)


def from_namespace(cls: type[T], args: argparse.Namespace) -> T:
    """The settings ``args`` (parsed with :func:`add_options`) hold; the model's own
    checks (``__post_init__``) run, so a bad value raises ValueError here."""
    return cls(**{s.name: getattr(args, s.name, s.default) for s in settings_of(cls)})


def config_schema(cls: type) -> dict[str, dict[str, str]]:
    """section -> TOML key -> field name, for :mod:`fedsecure.config_file`."""
    out: dict[str, dict[str, str]] = {}
    for s in settings_of(cls):
        if s.option.in_file:
            out.setdefault(s.option.section, {})[s.key] = s.name
    return out


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str | Path) else repr(value)


def reference_table(cls: type) -> str:
    """The Markdown table of ``cls``'s settings (docs/configuration.md holds it verbatim,
    and a test fails when the two differ)."""
    lines = ["| section | key | flag | default | what it sets |", "|---|---|---|---|---|"]
    for s in settings_of(cls):
        key = f"`{s.key}`" if s.option.in_file else "— (flag only)"
        default = _shown(s.default)
        if s.option.required:
            default = "required" if s.option.one_of is None else f"this or another `{s.option.one_of}` key"
        text = s.option.help.replace("|", "\\|")
        lines.append(f"| {s.option.section} | {key} | `{s.flag}` | {default} | {text} |")
    return "\n".join(lines) + "\n"
