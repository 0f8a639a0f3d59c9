"""The experiment queue's command arguments: one JSON schema per command (no tango).

Every queue command that takes JSON checks its argument once, where it enters
(:func:`argument`), with ``tango_devices.common.jsonargs``: the text bounded in
size and nesting, NaN and Infinity refused, then checked against the
command's schema below; a refusal names the field and ends with how the
command is used (:data:`USAGE`). Nothing reaches the queue's logic that its
schema does not allow.

What a uid is: a string of 1 to 64 letters, digits and ``_ . : -`` (the
queue's own are 12 hex digits). A number is not a uid: ``{"uid": 5}`` is
refused in every command, so an item's uid is the same text in memory, in the
file and after a restart. Only where a command takes a bare uid as its whole
argument (``Remove("5")``, ``Duplicate("5")``) is the text itself the uid.

Big batches: jsonschema takes about 80 us per item (1.6 s for 20,000), so
each schema is also compiled here into a plain-Python check
(:func:`quick_check`) that accepts only what jsonschema accepts. A value it
passes is taken at once; anything else goes through jsonschema, which decides
and names the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tango_devices.common.jsonargs import ArgumentError, check, loads

MAX_BATCH = 100_000  # items in one AddBatch
MAX_ARGS = 1_000  # arguments of one macro
MAX_TIMEOUT = 3_600.0  # s

UID = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9_.:-]{1,64}$",
    "description": "1 to 64 letters, digits and _ . : - (a number is not a uid)",
}
POSITION = {
    "anyOf": [
        {"enum": ["front", "back"]},
        {"type": "integer", "minimum": -1_000_000_000, "maximum": 1_000_000_000},
        {
            "type": "object",
            "properties": {"before": UID, "after": UID},
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
        },
    ]
}
TIMEOUT = {
    "type": "number",
    "exclusiveMinimum": 0,
    "maximum": MAX_TIMEOUT,
    "description": "seconds the client waits for the answer (default 3, Tango's)",
}
MACRO = {"type": "string", "pattern": r"^\s*[A-Za-z_][A-Za-z0-9_]{0,99}\s*$"}
ARGS = {
    "type": "array",
    "maxItems": MAX_ARGS,
    "items": {
        "type": ["string", "number", "boolean"],
        "maxLength": 10_000,
        # 1e400 is parsed as infinity: not a number a macro can take
        "minimum": -1.7976931348623157e308,
        "maximum": 1.7976931348623157e308,
    },
}
REPEAT = {"type": "integer", "minimum": 1, "maximum": 10_000}
META = {
    "type": "object",
    "maxProperties": 100,
    "properties": {"on_device_down": {"enum": ["wait", "fail"]}},
}
FIELDS = {"macro": MACRO, "args": ARGS, "repeat": REPEAT, "meta": META}
ITEM = {
    "type": "object",
    "properties": {**FIELDS, "uid": UID},
    "required": ["macro"],
    "additionalProperties": False,
}


def _object(properties: dict, required: tuple = (), null: bool = False) -> dict:
    return {
        "type": ["object", "null"] if null else "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


SCHEMAS: dict[str, dict] = {
    "Add": _object({**FIELDS, "uid": UID, "position": POSITION, "timeout": TIMEOUT}, ("macro",)),
    "AddBatch": _object(
        {
            "items": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": ITEM},
            "position": POSITION,
            "timeout": TIMEOUT,
        },
        ("items",),
    ),
    "Update": _object({"uid": UID, **FIELDS, "timeout": TIMEOUT}, ("uid",)),
    "Move": _object({"uid": UID, "position": POSITION, "timeout": TIMEOUT}, ("uid", "position")),
    "Remove": _object(
        {
            "uids": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH,
                "uniqueItems": True,
                "items": UID,
            },
            "timeout": TIMEOUT,
        },
        ("uids",),
    ),
    "Duplicate": _object({"uid": UID, "position": POSITION, "timeout": TIMEOUT}, ("uid",)),
    "Pause": _object({"deferred": {"type": "boolean"}}, null=True),
    "History": _object(
        {"limit": {"type": "integer", "minimum": 0, "maximum": 1_000_000}}, null=True
    ),
    **{
        name: _object({"timeout": {**TIMEOUT, "maximum": 600}}, null=True)
        for name in ("StopMacro", "AbortMacro", "HaltMacro")
    },
}
SCHEMAS["BareUid"] = UID

_POS = "'front', 'back', an index, {\"before\": uid} or {\"after\": uid}"
USAGE = {
    "Add": 'Add takes {"macro": "ct", "args": [0.1], "repeat": 1, "meta": {}, '
    f'"uid": "...", "position": "back"}} (only macro is needed); position: {_POS}',
    "AddBatch": 'AddBatch takes {"items": [{"macro": "ct", "args": [0.1]}, ...], '
    f'"position": "back", "timeout": 3}} or the list of items; position: {_POS}',
    "Update": 'Update takes {"uid": "...", and the fields to change: "macro", "args", '
    '"repeat", "meta"}',
    "Move": f'Move takes {{"uid": "...", "position": P}}; P: {_POS}',
    "Remove": 'Remove takes {"uids": ["...", ...]}, a list of uids or one uid',
    "Duplicate": f'Duplicate takes {{"uid": "...", "position": P}} or one uid; P: {_POS}',
    "Pause": 'Pause takes "" (now) or {"deferred": true} (after the current item)',
    "History": 'History takes "" (all) or {"limit": N} (the last N entries)',
    **{
        name: f'{name} takes "" or {{"timeout": S}}: seconds (0 < S <= 600) for each step'
        for name in ("StopMacro", "AbortMacro", "HaltMacro")
    },
}
USAGE["BareUid"] = "a uid is 1 to 64 letters, digits and _ . : -"


# -------------------------------------------------------- the quick check
_TYPE_TESTS = {
    "object": "isinstance(v, dict)",
    "array": "isinstance(v, list)",
    "string": "isinstance(v, str)",
    "boolean": "isinstance(v, bool)",
    "null": "v is None",
    "integer": "(isinstance(v, int) and not isinstance(v, bool)"
    " or isinstance(v, float) and v.is_integer())",
    "number": "(isinstance(v, (int, float)) and not isinstance(v, bool))",
}
_ANNOTATIONS = {"description", "title", "examples", "$comment", "default"}
_KNOWN = {
    "type",
    "enum",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "uniqueItems",
    "items",
    "required",
    "properties",
    "additionalProperties",
    "minProperties",
    "maxProperties",
    "anyOf",
}


def _unique(v: list) -> bool:
    # strings only: anything else is left to jsonschema's own comparison
    return all(isinstance(x, str) for x in v) and len(set(v)) == len(v)


def quick_check(schema: Mapping[str, Any] | bool) -> Callable[[Any], bool]:
    """A plain-Python predicate for ``schema`` that is True only where
    jsonschema accepts the value (False may also mean "ask jsonschema"),
    compiled to Python source (one function per schema node, ~2 us an item).
    Only the keywords the queue's schemas use are known; any other is an
    error here, so the checks cannot drift from the schemas silently."""
    env: dict[str, Any] = {"_unique": _unique}
    counter = iter(range(1_000_000))

    def node(schema: Mapping[str, Any] | bool) -> str:
        name = f"_f{next(counter)}"
        if schema is True or schema is False:
            env[name] = (lambda v: True) if schema else (lambda v: False)
            return name
        unknown = set(schema) - _KNOWN - _ANNOTATIONS
        if unknown:
            raise ValueError(f"quick_check does not know {sorted(unknown)}")
        lines = [f"def {name}(v):"]

        def fail_if(cond: str, indent: int = 1) -> None:
            lines.append("    " * indent + f"if {cond}: return False")

        if "type" in schema:
            kinds = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
            fail_if("not (" + " or ".join(_TYPE_TESTS[k] for k in kinds) + ")")
        if "enum" in schema:
            if not all(isinstance(e, str) for e in schema["enum"]):
                raise ValueError("quick_check: only enums of strings")
            env[f"{name}_enum"] = frozenset(schema["enum"])
            fail_if(f"not (isinstance(v, str) and v in {name}_enum)")
        if "anyOf" in schema:
            subs = [node(s) for s in schema["anyOf"]]
            fail_if("not (" + " or ".join(f"{s}(v)" for s in subs) + ")")
        text = [k for k in ("minLength", "maxLength", "pattern") if k in schema]
        if text:
            lines.append("    if isinstance(v, str):")
            if "minLength" in schema:
                fail_if(f"len(v) < {schema['minLength']!r}", 2)
            if "maxLength" in schema:
                fail_if(f"len(v) > {schema['maxLength']!r}", 2)
            if "pattern" in schema:
                env[f"{name}_re"] = re.compile(schema["pattern"]).search
                fail_if(f"{name}_re(v) is None", 2)
        bounds = {
            "minimum": "<",
            "maximum": ">",
            "exclusiveMinimum": "<=",
            "exclusiveMaximum": ">=",
        }
        if any(k in schema for k in bounds):
            lines.append("    if isinstance(v, (int, float)) and not isinstance(v, bool):")
            for key, op in bounds.items():
                if key in schema:
                    fail_if(f"v {op} {schema[key]!r}", 2)
        if any(k in schema for k in ("minItems", "maxItems", "uniqueItems", "items")):
            lines.append("    if isinstance(v, list):")
            if "minItems" in schema:
                fail_if(f"len(v) < {schema['minItems']!r}", 2)
            if "maxItems" in schema:
                fail_if(f"len(v) > {schema['maxItems']!r}", 2)
            if schema.get("uniqueItems"):
                fail_if("not _unique(v)", 2)
            if "items" in schema:
                sub = node(schema["items"])
                lines.append("        for x in v:")
                fail_if(f"not {sub}(x)", 3)
        keys = ("required", "properties", "additionalProperties", "minProperties", "maxProperties")
        if any(k in schema for k in keys):
            lines.append("    if isinstance(v, dict):")
            if "minProperties" in schema:
                fail_if(f"len(v) < {schema['minProperties']!r}", 2)
            if "maxProperties" in schema:
                fail_if(f"len(v) > {schema['maxProperties']!r}", 2)
            for key in schema.get("required", ()):
                fail_if(f"{key!r} not in v", 2)
            props = {k: node(s) for k, s in schema.get("properties", {}).items()}
            env[f"{name}_props"] = {k: env[f] for k, f in props.items()}
            extra = schema.get("additionalProperties", True)
            extra_fn = None if extra is False else node(extra) if extra is not True else None
            if props or extra is not True:
                lines.append("        for k, x in v.items():")
                lines.append(f"            p = {name}_props.get(k)")
                lines.append("            if p is not None:")
                fail_if("not p(x)", 4)
                if extra is False:
                    lines.append("            else: return False")
                elif extra_fn:
                    lines.append("            else:")
                    fail_if(f"not {extra_fn}(x)", 4)
        lines.append("    return True")
        exec("\n".join(lines), env)  # noqa: S102 - source built here from the schema
        return name

    return env[node(schema)]


_QUICK = {name: quick_check(schema) for name, schema in SCHEMAS.items()}


# ------------------------------------------------------------ entry point
def _checked(value: Any, command: str, what: str) -> Any:
    if not _QUICK[command](value):
        check(value, SCHEMAS[command], what)  # names the field (or, rarely, accepts)
    return value


def _integral(value: Any) -> Any:
    """2.0 is the integer 2 to JSON schema; hand the logic an int."""
    return int(value) if isinstance(value, float) else value


def _bare(text: str) -> bool:
    return not text.strip().startswith(("{", "[", '"'))


def argument(command: str, text: str) -> Any:
    """The argument of ``command`` (JSON text) checked against its schema,
    integers as ints. Raises ArgumentError naming the field and the usage.

    Remove and Duplicate also take one uid, bare or as a JSON string (and
    Remove a list of uids); AddBatch also takes the list of items. Empty text
    is JSON null (where the command takes nothing)."""
    try:
        if command in ("Remove", "Duplicate") and text.strip() and _bare(text):
            value: Any = _checked(text.strip(), "BareUid", command)
        else:
            value = loads(text, command) if text and text.strip() else None
        if command in ("Remove", "Duplicate") and isinstance(value, str):
            value = _checked(value, "BareUid", command)
            value = {"uids": [value]} if command == "Remove" else {"uid": value}
        elif command == "Remove" and isinstance(value, list):
            value = {"uids": value}
        elif command == "AddBatch" and isinstance(value, list):
            value = {"items": value}
        value = _checked(value, command, command)
        if command == "AddBatch":
            _no_uid_twice(value["items"], command)
    except ArgumentError as exc:
        raise ArgumentError(f"{exc}. {USAGE[command]}") from None
    if isinstance(value, dict):
        for key in ("repeat", "position", "limit"):
            if key in value:
                value[key] = _integral(value[key])
        for item in value.get("items", ()) if command == "AddBatch" else ():
            if "repeat" in item:
                item["repeat"] = _integral(item["repeat"])
    return value


def _no_uid_twice(items: list[dict], what: str) -> None:
    seen: dict[str, int] = {}
    for n, item in enumerate(items):
        uid = item.get("uid")
        if uid is None:
            continue
        if uid in seen:
            raise ArgumentError(
                f"{what}: items.{n}.uid: {uid!r} is also the uid of items.{seen[uid]}; "
                "every item needs its own uid"
            )
        seen[uid] = n
