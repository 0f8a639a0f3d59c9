"""JSON arguments of commands, checked once where they enter (no tango).

Every command that takes JSON text parses it with :func:`parse`: the text is
bounded in size and the value in nesting depth, NaN and Infinity are refused,
and the value is checked against a JSON schema whose refusals name the field
(``items.3.repeat: 0 is less than the minimum of 1``). Whatever is wrong, the
caller gets one :class:`ArgumentError` with a message for the user, never a
Python error (RecursionError, OverflowError, TypeError ...).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any

MAX_BYTES = 64 * 1024 * 1024  # a 20,000-item batch is ~1 MB
MAX_DEPTH = 16  # nesting of arrays and objects


class ArgumentError(ValueError):
    """A command argument that is not what the command takes; says what and where."""


def _refuse_constant(name: str) -> Any:
    raise ArgumentError(f"{name} is not a number JSON allows; give a finite number")


def _too_large(value: Any, path: tuple = ()) -> tuple | None:
    """The path of the first number JSON gave as infinity (1e400), or None."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where
        if isinstance(item, dict):
            stack.extend((v, (*where, k)) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, (*where, i)) for i, v in reversed(list(enumerate(item))))
    return None


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Is ``value`` nested more than ``limit`` levels deep? (Iterative: it is
    what the limit protects from.) Scalars are never pushed, so a flat list
    of 20,000 items costs one pass over it."""
    level = [value]
    for _ in range(limit):
        deeper = []
        for item in level:
            if isinstance(item, dict):
                deeper.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                deeper.extend(v for v in item if isinstance(v, dict | list))
        if not deeper:
            return False
        level = deeper
    return True


def loads(text: str, what: str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` as JSON within the bounds; ArgumentError names ``what``."""
    if not isinstance(text, str):
        raise ArgumentError(f"{what}: takes JSON text, not {type(text).__name__}")
    if len(text) > max_bytes:
        raise ArgumentError(
            f"{what}: the argument is {len(text):,} characters; at most {max_bytes:,} are taken"
        )
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ArgumentError as exc:
        raise ArgumentError(f"{what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ArgumentError(
            f"{what}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise ArgumentError(f"{what}: nested more than {max_depth} levels deep") from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise ArgumentError(f"{what}: {exc}") from None
    if _depth_exceeds(value, max_depth):
        raise ArgumentError(f"{what}: nested more than {max_depth} levels deep")
    where = _too_large(value)
    if where is not None:
        raise ArgumentError(
            f"{what}: {field_path(where)}: a number too large to be finite (like 1e400); "
            "give a finite number"
        )
    return value


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str):
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def validator(schema: Mapping[str, Any]):
    """A compiled (and cached) validator for ``schema``."""
    return _validator(json.dumps(schema, sort_keys=True))


def field_path(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def check(value: Any, schema: Mapping[str, Any], what: str) -> Any:
    """``value`` if it matches ``schema``, else ArgumentError naming the field."""
    import jsonschema

    errors = list(validator(schema).iter_errors(value))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise ArgumentError(f"{what}: {field_path(error.absolute_path)}: {_message(error)}")
    return value


def _message(error) -> str:
    """jsonschema's message, with a long value quoted in part only (so that
    "... is too long" survives)."""
    text = error.message
    if len(text) <= 300:
        return text
    quoted = repr(error.instance)
    if quoted in text:
        text = text.replace(quoted, f"{quoted[:60]}... ({len(quoted):,} characters)")
    return text if len(text) <= 400 else text[:400] + " ..."


def parse(text: str, schema: Mapping[str, Any], what: str, **bounds: int) -> Any:
    """:func:`loads` then :func:`check`; empty text is JSON ``null``."""
    value = loads(text, what, **bounds) if text and text.strip() else None
    return check(value, schema, what)
