"""Command-line flags generated from the fields of the config models they mirror.

A flag that sets a field of a config model (``sim.config.EngineConfig``,
``sim.bench_serve.BenchServeConfig``, ``comem.plan.space.PlanSpec``) takes its name,
type, bounds, choices, default and help from the field, as vLLM generates its flags from
its config dataclasses: each is declared once, on the model.

- name: ``--`` and the field's name with dashes; ``json_schema_extra={"flags": [...]}``
  where vLLM's differs (the first is the flag's name, the others its aliases);
- type: a whole number or a number within the field's bounds (one line, exit 2, before
  anything runs; :mod:`comem.cli.args`), a ``Literal``'s values as the choices, a
  ``bool`` as a switch (``--no-...`` for a field that defaults to true);
- a list: one or more values (``nargs="+"``), each typed as above;
- default: the field's (``defaults=False``: None, for flags over a file's settings);
  help: its ``description``, where ``{default}`` stands for the default;
- the namespace attribute is the field's name, so ``fields_of(args, ...)`` gives the
  model's input back.

A command overrides any of these per field where it must (a default that depends on
the GPU, vLLM's spelling of a value).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from comem.cli.args import (
    _fraction,
    _int_at_least,
    _positive_number,
    _positive_seconds,
    _probability,
    _seconds,
    _token_count,
)


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    fields: Iterable[str],
    overrides: dict[str, dict[str, Any]] | None = None,
    defaults: bool = True,
) -> None:
    """Add a flag per field of ``model`` in ``fields`` (in that order), each as
    :func:`flag_arguments` makes it, with ``overrides[field]`` on top (argparse keywords).
    ``defaults=False``: a flag left out is None (the settings it overrides keep theirs)."""
    for name in fields:
        flags, kwargs = flag_arguments(model, name)
        if not defaults and kwargs.get("action") is None:
            kwargs["default"] = None
        kwargs.update((overrides or {}).get(name, {}))
        parser.add_argument(*flags, **kwargs)


def fields_of(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """The values of the flags :func:`add_model_flags` added for ``fields``, by field."""
    return {name: getattr(args, name) for name in fields}


def flag_arguments(model: type[BaseModel], name: str) -> tuple[list[str], dict[str, Any]]:
    """The option strings and ``add_argument`` keywords of the flag mirroring ``name``."""
    info = model.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    flags = list(typing.cast(list[str], extra.get("flags", ["--" + name.replace("_", "-")])))
    kwargs: dict[str, Any] = {"dest": name}
    default = info.get_default(call_default_factory=True)
    if info.description:  # argparse formats help with %: a literal one is doubled
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
        kwargs["help"] = info.description.replace("{default}", shown).replace("%", "%%")
    value_type = _value_type(info.annotation)
    if typing.get_origin(value_type) is list:
        kwargs["nargs"] = "+"
        value_type = _value_type(typing.get_args(value_type)[0])
    if value_type is bool:
        kwargs["action"] = "store_false" if default else "store_true"
        return flags, kwargs
    kwargs["default"] = default
    # the value's placeholder in --help: named after the flag, as argparse names it
    kwargs["metavar"] = extra.get("metavar", flags[0].lstrip("-").replace("-", "_").upper())
    choices = typing.get_args(value_type) if typing.get_origin(value_type) is typing.Literal else ()
    if choices:
        kwargs["choices"] = choices
        del kwargs["metavar"]  # argparse shows the choices
    else:
        parse = _parser(value_type, _bounds(info), str(extra.get("unit", "")))
        if parse is not None:
            kwargs["type"] = parse
    return flags, kwargs


def _value_type(annotation: Any) -> Any:
    """The type a field holds when it is given: ``X | None`` is ``X``, ``Annotated[X, ...]``
    is ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kept = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kept[0] if len(kept) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _annotated(annotation: Any) -> list[Any]:
    """The ``Annotated`` types within ``annotation`` (``X | None``, ``list[X]``)."""
    found = []
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Annotated:
            found.append(arg)
        elif typing.get_origin(arg) is not None:
            found.extend(_annotated(arg))
    return found


def _bounds(info: FieldInfo) -> dict[str, Any]:
    """The field's bounds (``ge``, ``gt``, ``le``, ``lt``, ``allow_inf_nan``), also those of
    an optional field's ``Annotated`` type."""
    metadata = list(info.metadata)
    for arg in _annotated(info.annotation):
        for meta in typing.get_args(arg)[1:]:
            metadata.extend(meta.metadata if isinstance(meta, FieldInfo) else [meta])
    keys = ("ge", "gt", "le", "lt", "allow_inf_nan")
    return {k: getattr(m, k) for m in metadata for k in keys if getattr(m, k, None) is not None}


def _parser(value_type: Any, bounds: dict[str, Any], unit: str = "") -> Callable[[str], Any] | None:
    """The argparse type of a number field: its bounds checked where the flag is read;
    None for text (a name or a path, checked by the model). A float bounded like
    :data:`calibration.inputs.Seconds` is a duration unless the field declares another
    ``unit`` (``json_schema_extra``: GiB of offload memory share the 1e6 bound)."""
    from calibration.inputs import MAX_SECONDS, MAX_TOKENS

    if value_type is int:
        low = bounds.get("ge", bounds["gt"] + 1 if "gt" in bounds else None)
        high = bounds.get("le")
        if low == 1 and high == MAX_TOKENS:
            return _token_count
        return int if low is None else _int_at_least(int(low), high)
    if value_type is float:
        finite = bounds.get("allow_inf_nan") is False
        if bounds.get("gt") == 0.0 and bounds.get("le") == 1.0:
            return _fraction
        if bounds.get("le") == MAX_SECONDS and finite and unit in ("", "s"):  # a duration
            return _positive_seconds if bounds.get("gt") == 0.0 else _seconds
        if bounds.get("ge") == 0.0 and bounds.get("le") == 1.0:
            return _probability
        if bounds.get("gt") == 0.0 and finite:
            return _positive_number
        return float
    return None
