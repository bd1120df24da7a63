"""Reading a user's files: one clear line for every defect.

Every input file of comem-sim (scenario, sweep and grid TOML, profile and workload JSON,
measurement CSV) is read through here, so each defect reads the same wherever it
happens: a missing file, a directory or a device where a file was expected, bytes that
are not UTF-8, text that does not parse, nesting deep enough to exhaust Python's stack,
an empty file. :func:`validate` turns a pydantic error into one line naming the field
(with a "did you mean" for a misspelt one). Where outputs may go is
:mod:`calibration.outputs`.
"""

from __future__ import annotations

import difflib
import json
import math
import stat
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from calibration.errors import ComemInputError

#: An input file larger than this is refused before it is read (the largest file the
#: project reads is a measurement CSV of a few MB; /dev/zero is refused earlier).
MAX_INPUT_BYTES = 256 << 20

#: JSON or TOML nested deeper than this is refused (no comem input nests past 6; Python
#: parsers and deep copies run out of stack near 1000).
MAX_NESTING = 64


# --- field types shared by every input model ------------------------------------------

#: The longest span a seconds field may hold: 10^6 s (11.6 days). Simulated clocks are
#: float64; past ~10^9 s they lose the microseconds iteration times are made of, and a
#: tool call or think time of weeks is a typo, not an agent.
MAX_SECONDS = 1e6
#: The most tokens a token-count field may hold: 10^9, beyond every model's context
#: (a request longer than ``max_model_len`` is rejected anyway); larger counts only
#: overflow 64-bit sums.
MAX_TOKENS = 10**9

#: A finite duration in seconds, 0 to :data:`MAX_SECONDS`.
Seconds = Annotated[float, Field(ge=0.0, le=MAX_SECONDS, allow_inf_nan=False)]
#: A finite rate per second whose mean gap fits :data:`MAX_SECONDS`.
Rate = Annotated[float, Field(ge=1.0 / MAX_SECONDS, allow_inf_nan=False)]
#: A token count, 1 to :data:`MAX_TOKENS`.
Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
#: A token count, 0 to :data:`MAX_TOKENS`.
TokensOrZero = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
#: A file path or a name that may be one (a model's config.json, a device JSON): not
#: empty (it names no file), no control characters (a NUL byte makes no file name; a
#: newline breaks the line)
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"
PathText = Annotated[
    str, StringConstraints(pattern=NO_CONTROL_CHARACTERS, min_length=1, max_length=4096)
]
#: A name printed in tables and one-line messages: not empty, no control characters (a
#: newline would break the line), at most 200 characters.
Name = Annotated[
    str, StringConstraints(pattern=NO_CONTROL_CHARACTERS, min_length=1, max_length=200)
]


def _takes_number(annotation: Any) -> bool:
    """Whether a field annotation holds ints or floats (and not booleans)."""
    found: set[type] = set()
    stack = [annotation]
    while stack:
        a = stack.pop()
        if a in (int, float, bool):
            found.add(a)
        stack.extend(typing.get_args(a))
    return bool(found & {int, float}) and bool not in found


class InputModel(BaseModel):
    """Base of every model read from a user's file or command line: an unknown field is
    an error, and a number field refuses ``true``/``false`` (pydantic would read them
    as 1 and 0: ``agents = true`` is a typo, not one agent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if field is None or not _takes_number(field.annotation):
                    continue
                items = value if isinstance(value, list) else [value]
                if any(isinstance(v, bool) for v in items):
                    raise ValueError(f"{name} must be a number, got {json.dumps(value)}")
        return data


def input_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a regular file; else one line saying what it is instead."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ComemInputError(f"{p}: {what} file does not exist") from None
    except OSError as exc:
        raise ComemInputError(f"{p}: cannot read the {what} file ({exc.strerror})") from None
    except ValueError:  # a NUL byte: no file can have that name
        raise ComemInputError(f"{str(p)!r}: not a file name (it holds a NUL byte)") from None
    if stat.S_ISDIR(mode):
        raise ComemInputError(f"{p}: is a directory, expected a {what} file")
    if not stat.S_ISREG(mode):
        raise ComemInputError(f"{p}: not a regular file (a device or pipe), expected a {what} file")
    size = p.stat().st_size
    if size > MAX_INPUT_BYTES:
        raise ComemInputError(
            f"{p}: {size / 2**20:.0f} MiB, too large for a {what} file"
            f" (limit {MAX_INPUT_BYTES >> 20} MiB)"
        )
    return p


def read_bytes(path: str | Path, what: str) -> bytes:
    p = input_file(path, what)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ComemInputError(f"{p}: cannot read the {what} file ({exc.strerror})") from None


def read_text(path: str | Path, what: str) -> str:
    """A file's UTF-8 text (a leading byte-order mark is dropped)."""
    raw = read_bytes(path, what)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ComemInputError(
            f"{path}: not UTF-8 text (byte {exc.start}); a {what} file is UTF-8 text"
        ) from None


def nesting_depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (iterative: no recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            return depth
        stack.extend((c, depth) for c in children)
    return deepest


#: the largest integer a file may hold: beyond it no count, size or time of this domain
#: lies, and arithmetic on it overflows floats (an OverflowError deep in a fit)
MAX_FILE_INT = 2**63


def _huge_int(value: Any) -> int | None:
    """The first integer in ``value`` (lists and dicts walked) beyond :data:`MAX_FILE_INT`."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_FILE_INT:
            return node
    return None


def _check_nesting(value: Any, where: str) -> Any:
    """``value`` as read, refused if it nests too deeply or holds an integer of more
    digits than any quantity here has."""
    if nesting_depth(value) > MAX_NESTING:
        raise ComemInputError(f"{where}: nested more than {MAX_NESTING} levels deep")
    huge = _huge_int(value)
    if huge is not None:
        raise ComemInputError(
            f"{where}: an integer of {len(str(abs(huge)))} digits: no quantity here is that"
            f" large (at most {MAX_FILE_INT:.3g})"
        )
    return value


def parse_json(text: str, where: str) -> Any:
    """JSON text (a file's or a command-line value's); ``where`` names it in errors."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ComemInputError(
            f"{where}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ComemInputError(f"{where}: nested more than {MAX_NESTING} levels deep") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ComemInputError(f"{where}: not a usable number ({_first_line(exc)})") from None
    return _check_nesting(value, where)


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(";")[0]


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file's value; one clear line if it cannot be read or parsed."""
    return parse_json(read_text(path, what), str(path))


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's table; one clear line if it is missing, not TOML, or empty (an empty
    file is far more often a mistake than a wish for every default)."""
    text = read_text(path, what)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ComemInputError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ComemInputError(f"{path}: nested more than {MAX_NESTING} levels deep") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ComemInputError(f"{path}: not a usable number ({_first_line(exc)})") from None
    if not data:
        hint = (
            '; to run every default on purpose, write one setting, e.g. name = "defaults"'
            if what == "scenario"
            else ""
        )
        raise ComemInputError(f"{path}: the {what} file is empty (no settings){hint}")
    return _check_nesting(data, str(path))


def read_csv(path: str | Path, what: str, **options: Any) -> Any:
    """A CSV file as a pandas DataFrame (``options`` go to ``pandas.read_csv``); one line
    if it is no readable CSV (not a file, not UTF-8, empty or a header only, unbalanced
    quotes, a column ``usecols`` names that is missing). A byte-order mark is dropped."""
    import pandas as pd

    p = input_file(path, what)
    try:
        frame = pd.read_csv(p, encoding="utf-8-sig", **options)
    except UnicodeDecodeError as exc:
        raise ComemInputError(
            f"{p}: not UTF-8 text (byte {exc.start}); a {what} file is UTF-8 text"
        ) from None
    except pd.errors.EmptyDataError:
        raise ComemInputError(f"{p}: the {what} file is empty (no header row)") from None
    except (ValueError, pd.errors.ParserError) as exc:  # ParserError is a ValueError
        raise ComemInputError(f"{p}: not a readable {what} CSV ({_first_line(exc)})") from None
    except OSError as exc:
        raise ComemInputError(f"{p}: cannot read the {what} file ({exc.strerror})") from None
    if frame.empty:
        raise ComemInputError(f"{p}: the {what} file has no rows (a header only)")
    _check_csv_shape(p, what)
    return frame


def _check_csv_shape(p: Path, what: str) -> None:
    """Refuse a header that names a column twice (pandas would rename the second copy and
    read the first) and a row with more or fewer cells than the header (pandas would take
    extra leading cells as an index and shift every value to the wrong column)."""
    import csv

    from pandas.io.common import get_handle  # type: ignore[import-not-found]

    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(1 << 30)  # pandas reads long cells; the file's size limit holds
        # compressed as pandas reads it (.gz, .bz2, .zip, .xz, .zst, any case)
        with get_handle(p, "r", encoding="utf-8-sig", compression="infer") as handle:
            rows = csv.reader(handle.handle)
            header = next(rows, [])
            names = [h.strip() for h in header]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ComemInputError(
                    f"{p}: the header names column {twice[0]!r} twice; a {what} file names"
                    " each column once"
                )
            for number, row in enumerate(rows, start=2):
                blank = not any(cell.strip() for cell in row)  # pandas skips such lines
                if not blank and len(row) != len(header):
                    raise ComemInputError(
                        f"{p}: row {number} has {len(row)} cells, the header {len(header)};"
                        f" a {what} file has one cell per column"
                    )
    except (OSError, csv.Error, UnicodeDecodeError, EOFError) as exc:
        raise ComemInputError(f"{p}: not a readable {what} CSV ({exc})") from None
    finally:
        csv.field_size_limit(limit)


def require_columns(
    frame: Any,
    columns: Any,
    where: Any,
    note: str = "",
    error: type[ComemInputError] = ComemInputError,
) -> None:
    """Refuse a table without every one of ``columns``: one line naming the missing ones,
    after ``where`` (the file) and before ``note``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise error(f"{where}: missing column(s) {', '.join(missing)}{note}")


def numeric_column(
    frame: Any,
    column: str,
    where: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    whole: bool = False,
    nullable: bool = False,
) -> Any:
    """A CSV column as numbers, checked: every value a (whole) number in [low, high],
    empty cells allowed only if ``nullable``; else one line naming the file, the row
    (1-based, after the header) and the value. ``frame`` is a pandas DataFrame."""
    import pandas as pd

    raw = frame[column]
    try:
        values = pd.to_numeric(raw, errors="coerce")
    except OverflowError:  # an integer cell of hundreds of digits: as text, it is inf
        values = pd.to_numeric(raw.astype(str), errors="coerce")
    present = values.notna()
    finite = values.abs() < math.inf
    bad = (~present & raw.notna()) | (present & ~((values >= low) & (values <= high) & finite))
    if not nullable:
        bad |= ~present
    if whole:
        bad |= present & (values != values.round())
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        label = frame.index[i]  # a row of a subset keeps its file row in the index
        row = int(label) + 2 if isinstance(label, int) or hasattr(label, "__index__") else i + 2
        value = raw.iloc[i]
        value = value.item() if hasattr(value, "item") else value  # a numpy scalar
        kind = "a whole number" if whole else "a number"
        if not pd.notna(values.iloc[i]) and pd.notna(value):  # text where a number goes
            raise ComemInputError(
                f"{where}:{row}: column '{column}' is not a number (got {_short(value)})"
            )
        span = (
            f" in [{_bound(low)}, {_bound(high)}]" if (low, high) != (-math.inf, math.inf) else ""
        )
        empty = " or empty" if nullable else ""
        raise ComemInputError(
            f"{where}:{row}: column '{column}' must be {kind}{span}{empty} (got {_short(value)})"
        )
    return values


def _bound(x: float) -> str:
    if not math.isfinite(x):
        return "-inf" if x < 0 else "inf"
    return f"{int(x):,}" if x == int(x) else f"{x:g}"


# --- validation -------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, unions, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_models_in(arg))
    return out


def _models_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The models that may sit at ``path`` (a pydantic error location) below ``model``."""
    models = [model]
    for part in path:
        if isinstance(part, int):
            continue
        found: list[type[BaseModel]] = []
        for m in models:
            if part in m.model_fields:
                found.extend(_models_in(m.model_fields[part].annotation))
        if not found:  # a discriminated union puts the chosen member's tag in the path
            found = [
                m
                for m in models
                if "kind" in m.model_fields and m.model_fields["kind"].default == part
            ]
        if not found:
            return []
        models = found
    return models


def close_name_hint(name: str, names: Any) -> str:
    """``"; did you mean 'agents'?"`` for a misspelling of one of ``names``; the names
    themselves when there are a few; else ``""``."""
    known = sorted(names)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if known and len(known) <= 12:
        return f"; known: {', '.join(known)}"
    return ""


def did_you_mean(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """:func:`close_name_hint` for a misspelt field at ``loc`` of a pydantic ``model``."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    return close_name_hint(
        loc[-1], {n for m in _models_at(model, loc[:-1]) for n in m.model_fields}
    )


def refuse_unknown_keys(data: dict[str, Any], known: Any, where: str) -> None:
    """One line, with a "did you mean", for the first key of ``data`` (a JSON object read
    from a file) not in ``known``: a misspelt field must not be dropped without a word
    (in a profile, a term it names would price as 0)."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        hint = close_name_hint(unknown[0], known)
        raise ComemInputError(f"{where}: unknown field {unknown[0]!r}{hint}")


def validate(
    model: type[M], data: Any, where: str = "", union_tags: frozenset[str] = frozenset()
) -> M:
    """Validate ``data`` into ``model``; the first error as one line naming the field.

    ``union_tags``: tags of discriminated unions, left out of the field path (pydantic
    puts the chosen member's tag there: ``workload.synthetic.agents``).
    """
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        raise ComemInputError(_first_error(model, exc, where, union_tags)) from None
    refuse_coerced_scalars(model, data, where, union_tags)
    return result


#: strict-mode errors of a value pydantic's lax mode converted from another scalar type
_SCALAR_TYPES = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false"}


def refuse_coerced_scalars(
    model: type[BaseModel], data: Any, where: str = "", union_tags: frozenset[str] = frozenset()
) -> None:
    """Refuse a number or a boolean written as a string (``agents = "2"``,
    ``async_scheduling = "no"``) or a boolean given for a number: pydantic's lax mode
    reads them (``"no"`` as false), a file that says something else than it means.
    Lists for tuples and strings for paths, which only strict mode refuses, stay
    accepted."""
    try:
        model.model_validate(data, strict=True)
    except ValidationError as exc:
        for err in exc.errors():
            value = err.get("input")
            if err["type"] in _SCALAR_TYPES and isinstance(value, str | bool):
                loc = ".".join(str(p) for p in err["loc"] if p not in union_tags)
                field = f"{where}: {loc}" if where and loc else (where or loc)
                kind = "the string" if isinstance(value, str) else "the boolean"
                raise ComemInputError(
                    f"{field}: expected {_SCALAR_TYPES[err['type']]}, got {kind}"
                    f" {_short(value)}"
                    + (" (write it without quotes)" if isinstance(value, str) else "")
                ) from None


def _first_error(
    model: type[BaseModel], exc: ValidationError, where: str, union_tags: frozenset[str]
) -> str:
    """A validation error as one line naming the field (and how many more there are)."""
    errors = exc.errors()
    err = errors[0]
    loc = ".".join(str(p) for p in err["loc"] if p not in union_tags)
    field = f"{where}: {loc}" if where and loc else (where or loc)
    if err["type"] == "extra_forbidden":
        hint = did_you_mean(model, tuple(err["loc"]))
        msg = f"{field}: unknown field{hint}"
    elif (
        err["type"] == "string_pattern_mismatch"
        and (err.get("ctx") or {}).get("pattern") == NO_CONTROL_CHARACTERS
    ):
        msg = (
            f"{field}: must not hold control characters (newline, tab, NUL byte)"
            f" (got {_short(err.get('input'))})"
        )
    elif err["type"] == "value_error":  # a model's own check: its message says it all
        msg = f"{field}: {err['msg'].removeprefix('Value error, ')}"
    else:
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {_short(value)})"
        msg = f"{field}: {err['msg']}{shown}"
    more = len(errors) - 1
    extra = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{msg}{extra}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_NESTING",
    "MAX_SECONDS",
    "MAX_TOKENS",
    "Name",
    "PathText",
    "Rate",
    "Seconds",
    "Tokens",
    "TokensOrZero",
    "InputModel",
    "close_name_hint",
    "did_you_mean",
    "input_file",
    "numeric_column",
    "nesting_depth",
    "parse_json",
    "read_bytes",
    "read_csv",
    "read_json",
    "read_text",
    "read_toml",
    "refuse_unknown_keys",
    "require_columns",
    "validate",
]
