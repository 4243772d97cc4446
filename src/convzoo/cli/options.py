"""Command-line flags generated from :class:`convzoo.train.config.TrainConfig`.

Every training option is declared once, as a field of ``TrainConfig`` with an
:class:`~convzoo.train.config.Option` in its metadata (help, flag, group, choices, the
values it takes). :func:`add_config_arguments` turns those declarations into argparse
arguments, for ``convzoo train`` (all of them) and for the commands that take a subset
(``convzoo compare``); :func:`config_overrides` reads the given ones back as
``TrainConfig`` field values. An option left out is absent from the namespace, so the
recipe and the defaults decide it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from ..errors import ConfigError
from ..train.config import (
    GROUPS,
    field_default,
    flag_of,
    options,
    parse_option,
    parse_value,
)
from ..train.options import Option


def argument_type(name: str):
    """The argparse type of the field ``name``: text -> checked value, or an error that
    says what is expected (the same rule as :func:`~convzoo.train.config.check_config`)."""

    def parse(text: str):
        try:
            return parse_value(name, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def _model_option(text: str):
    try:
        return parse_option(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_model_option.__name__ = "model_option"


def default_text(name: str, opt: Option) -> str:
    """How ``--help`` states the default of the field ``name``."""
    if opt.default_text is not None:
        return opt.default_text
    value = field_default(name)
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_text(name: str, opt: Option, text: str | None = None) -> str:
    """The help of the field ``name`` (``text`` instead of its own), with its default."""
    return f"{text or opt.help} (default: {default_text(name, opt)})".replace("%", "%%")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    fields: Iterable[str] | None = None,
    *,
    title: str | None = None,
    helps: dict[str, str] | None = None,
) -> dict[str, argparse._ArgumentGroup]:
    """Add a flag for each ``TrainConfig`` field in ``fields`` (default: every field
    that has one), in groups (:data:`~convzoo.train.config.GROUPS`), or all in one group
    called ``title``. ``helps`` replaces the description of some fields. Returns the
    argument groups by name (``title`` for the single one), for the caller to add to."""
    wanted = None if fields is None else set(fields)
    helps = helps or {}
    declared = [(n, o) for n, o in options() if o.action and (wanted is None or n in wanted)]
    if wanted is not None:
        unknown = wanted - {n for n, _ in declared}
        if unknown:
            raise ValueError(f"no command-line option for {sorted(unknown)}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    order = [title] if title else list(GROUPS)
    for group_name in order:
        members = [(n, o) for n, o in declared if title or o.group == group_name]
        if not members and not title and group_name != "run":
            continue
        group = groups[group_name] = parser.add_argument_group(group_name)
        for name, opt in members:
            target = group
            if opt.exclusive:
                if opt.exclusive not in exclusive:
                    exclusive[opt.exclusive] = group.add_mutually_exclusive_group()
                target = exclusive[opt.exclusive]
            _add(target, name, opt, helps.get(name))
    return groups


def _add(target, name: str, opt: Option, text: str | None) -> None:
    kwargs: dict = {"dest": name, "default": argparse.SUPPRESS, "help": help_text(name, opt, text)}
    flag = flag_of(name)
    if opt.action == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif opt.action == "store_true":
        kwargs["action"] = "store_true"
    elif opt.action == "append":
        kwargs.update(action="append", type=_model_option, metavar=opt.metavar)
    else:
        kwargs.update(metavar=opt.metavar, choices=opt.choices)
        if opt.choices is None:
            kwargs["type"] = argument_type(name)
        if opt.nargs:
            kwargs.update(nargs=opt.nargs, const=opt.const)
    target.add_argument(flag, **kwargs)


def config_overrides(args: argparse.Namespace, fields: Iterable[str] | None = None) -> dict:
    """The ``TrainConfig`` fields given on the command line (of ``fields``, default all)."""
    wanted = None if fields is None else set(fields)
    given = {}
    for name, opt in options():
        if not opt.action or (wanted is not None and name not in wanted):
            continue
        if hasattr(args, name):
            value = getattr(args, name)
            given[name] = dict(value) if opt.action == "append" else value
    return given
