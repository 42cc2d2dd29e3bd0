"""Hypothesis strategies derived from the pydantic models that parse client input.

Valid examples come from each model's JSON schema (types, bounds, enums, required fields), so a
field added to a model is generated without touching this module. What a schema cannot say — a
custom validator such as "a BCP 47 tag" or "an IANA zone" — comes from ``VALIDATOR_HINTS``,
keyed by the validator; ``unhinted_validators`` lists any validated field the table does not
know, and a test fails on it, so a new validator is never silently generated at random.

Mutations are computed from a valid example and its schema: each says whether the server must
refuse it (``REJECT``), must accept it (``ACCEPT``) or may do either (``EITHER``: the schema
alone cannot tell, e.g. dropping an optional field that another field depends on).
"""

from __future__ import annotations

import enum
import json
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

# --- valid scalars the schemas cannot describe ------------------------------------------------

LANGUAGES = ["en", "fr", "de", "es", "pt-BR", "zh-Hant-TW", "ar", "nl", "sv", "yue"]
ZONES = ["UTC", "Europe/London", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
HHMM = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
IDS = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
P256 = "BAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
AUTH = "AgICAgICAgICAgICAgICAg"

# Text a person writes: letters first, then letters, digits, punctuation, symbols (emoji and
# other non-BMP characters included) and inner spaces. No control, format or surrogate code
# points: those are what the mutations send.
_WORDS = st.characters(categories=["L", "N", "P", "S"], codec="utf-8")


def text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    if max_size <= 0:
        return st.just("")
    top = max(min(max_size, 40), min_size)
    body = st.text(
        st.one_of(_WORDS, st.just(" ")), min_size=max(0, min_size - 1), max_size=max(0, top - 2)
    )
    first = st.characters(categories=["L"], codec="utf-8")
    last = st.one_of(st.just(""), _WORDS)
    out = st.builds(lambda a, b, c: a + b + c, first, body, last)
    return out.filter(lambda s: min_size <= len(s) <= max_size)


def _signal_data() -> st.SearchStrategy[dict[str, Any]]:
    sdp = st.fixed_dictionaries(
        {
            "type": st.sampled_from(["offer", "answer"]),
            "sdp": st.just("v=0\r\no=- 1 2 IN IP4 0\r\n"),
        }
    )
    candidate = st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {
                "candidate": st.just("candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host"),
                "sdpMid": st.just("0"),
                "sdpMLineIndex": st.just(0),
            }
        ),
    )
    return st.one_of(
        st.builds(lambda s: {"sdp": s}, sdp), st.builds(lambda c: {"candidate": c}, candidate)
    )


@dataclass(frozen=True)
class Hint:
    """A strategy for a validated field: ``leaf`` replaces each free string in the field's
    schema (the items of a list, the branch of an optional); otherwise the whole value. A
    callable is given the string's schema (for its length bounds)."""

    strategy: st.SearchStrategy[Any] | Callable[[dict[str, Any]], st.SearchStrategy[Any]]
    leaf: bool = True

    def for_schema(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        if isinstance(self.strategy, st.SearchStrategy):
            return self.strategy
        return self.strategy(schema)


# Text a person types and another sees: control characters and bidirectional controls refused.
TEXT_RULES = "_check_text.<locals>.check"


# Validator (by qualified name) -> what valid values look like.
VALIDATOR_HINTS: dict[str, Hint] = {
    "_check_language": Hint(st.sampled_from(LANGUAGES)),
    "_check_timezone": Hint(st.sampled_from(ZONES)),
    "Org._id": Hint(IDS),
    "QueueConfig._id": Hint(IDS),
    "Span._hhmm": Hint(HHMM),
    "RingWindow._parse_hhmm": Hint(HHMM),
    "SubscriptionKeys._p256dh": Hint(st.just(P256)),
    "SubscriptionKeys._auth": Hint(st.just(AUTH)),
    "Subscription._endpoint": Hint(IDS.map(lambda i: f"https://push.example.org/s/{i}")),
    "Signal._data": Hint(_signal_data(), leaf=False),
    "SignalData._candidate": Hint(st.none(), leaf=False),
    TEXT_RULES: Hint(lambda sch: text(sch.get("minLength", 0), sch.get("maxLength", 200))),
}


def _validator_names(model: type[BaseModel], name: str) -> list[str]:
    names = []
    for dec in model.__pydantic_decorators__.field_validators.values():
        if name in dec.info.fields:
            names.append(f"{model.__name__}.{dec.cls_var_name}")
    field = model.model_fields[name]
    names.extend(_annotated_validators(field.annotation))
    for meta in field.metadata:
        func = getattr(meta, "func", None)
        if func is not None:
            names.append(func.__qualname__)
    return names


def _annotated_validators(annotation: Any) -> list[str]:
    out = []
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            func = getattr(meta, "func", None)
            if func is not None:
                out.append(func.__qualname__)
    for arg in typing.get_args(annotation):
        if not isinstance(arg, (str, int, float, bool)) and arg is not None:
            out.extend(_annotated_validators(arg))
    return out


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        if not isinstance(arg, (str, int, float, bool, enum.Enum)) and arg is not None:
            yield from _models_in(arg)


def models_of(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model reachable from ``annotation`` (a model, a union, an Annotated)."""
    seen: dict[str, type[BaseModel]] = {}
    todo = list(_models_in(annotation))
    while todo:
        model = todo.pop()
        if model.__name__ in seen:
            continue
        seen[model.__name__] = model
        for field in model.model_fields.values():
            todo.extend(_models_in(field.annotation))
    return list(seen.values())


def field_hints(annotation: Any) -> dict[tuple[str, str], Hint]:
    hints = {}
    for model in models_of(annotation):
        for name in model.model_fields:
            for validator in _validator_names(model, name):
                if validator in VALIDATOR_HINTS:
                    hints[(model.__name__, name)] = VALIDATOR_HINTS[validator]
    return hints


def text_fields(annotation: Any) -> set[tuple[str, str]]:
    """(model, field) pairs under the rules for text a person sees."""
    return {
        (model.__name__, name)
        for model in models_of(annotation)
        for name in model.model_fields
        if TEXT_RULES in _validator_names(model, name)
    }


def unhinted_validators(annotation: Any) -> list[str]:
    """Validated fields reachable from ``annotation`` that ``VALIDATOR_HINTS`` does not know."""
    missing = []
    for model in models_of(annotation):
        for name in model.model_fields:
            for validator in _validator_names(model, name):
                if validator not in VALIDATOR_HINTS:
                    missing.append(f"{model.__name__}.{name} ({validator})")
    return missing


# --- schema -> strategy ------------------------------------------------------------------------

ABSENT = object()  # a pin that leaves the field out; any other pin is always sent


class Schema:
    """A JSON schema with its ``$defs``, and the hints and pins that make examples valid."""

    def __init__(
        self,
        annotation: Any,
        pins: dict[tuple[str, str], Any] | None = None,
    ) -> None:
        self.annotation = annotation
        self.adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        self.root = self.adapter.json_schema()
        self.defs: dict[str, Any] = self.root.get("$defs", {})
        self.hints = field_hints(annotation)
        self.text_fields = text_fields(annotation)
        self.pins = pins or {}

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.defs[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def is_valid(self, value: Any) -> bool:
        try:
            self.adapter.validate_python(value)
        except ValidationError:
            return False
        return True

    def valid(self) -> st.SearchStrategy[Any]:
        return self.strategy(self.root).filter(self.is_valid)

    def branches(self) -> dict[str, st.SearchStrategy[Any]]:
        """For a union of messages: valid examples of each, by its ``type``."""
        out = {}
        for branch in self.root.get("oneOf", []):
            kind = self.resolve(branch)["properties"]["type"]["const"]
            out[kind] = self.strategy(branch).filter(self.is_valid)
        return out

    def strategy(self, schema: dict[str, Any], hint: Hint | None = None) -> st.SearchStrategy[Any]:
        schema = self.resolve(schema)
        if hint is not None and not hint.leaf:
            return hint.for_schema(schema)
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = [self.strategy(s, hint) for s in schema[key]]
                return st.one_of(branches)
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            items = self.strategy(schema.get("items", {}), hint)
            lo = schema.get("minItems", 0)
            hi = min(schema.get("maxItems", lo + 2), lo + 2)
            return st.lists(items, min_size=lo, max_size=hi)
        if kind == "string":
            if hint is not None:
                return hint.for_schema(schema)
            return self._string(schema)
        if kind == "integer":
            return st.integers(schema.get("minimum", -1000), schema.get("maximum", 1000))
        if kind == "number":
            return st.floats(
                schema.get("minimum", -1000.0),
                schema.get("maximum", 1000.0),
                allow_nan=False,
                allow_infinity=False,
            )
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return st.one_of(st.none(), st.booleans(), st.integers(), text())  # any JSON

    def _string(self, schema: dict[str, Any]) -> st.SearchStrategy[str]:
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 200)
        fmt = schema.get("format")
        if fmt == "date":
            return st.dates().map(lambda d: d.isoformat())
        if fmt == "time":
            return HHMM
        if fmt == "uri":
            # Only loopback may ever be a target; port 9 (discard) is closed on loopback.
            return st.just("http://127.0.0.1:9/hook")
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: lo <= len(s) <= hi
            )
        return text(lo, hi)

    def _object(self, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        title = schema.get("title", "")
        props: dict[str, Any] = schema.get("properties", {})
        if not props:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                keys = schema.get("propertyNames", {}).get("enum")
                key = st.sampled_from(keys) if keys else text(1, 20)
                return st.dictionaries(key, self.strategy(extra), max_size=2)
            return st.dictionaries(text(1, 12), st.one_of(st.integers(), text()), max_size=2)
        required = set(schema.get("required", []))
        fixed: dict[str, st.SearchStrategy[Any]] = {}
        optional: dict[str, st.SearchStrategy[Any]] = {}
        for name, sub in props.items():
            pin = self.pins.get((title, name), None)
            if pin is ABSENT:
                continue
            if pin is not None:  # a pinned field is always sent
                fixed[name] = pin if isinstance(pin, st.SearchStrategy) else st.just(pin)
                continue
            strategy = self.strategy(sub, self.hints.get((title, name)))
            (fixed if name in required else optional)[name] = strategy
        return st.fixed_dictionaries(fixed, optional=optional)


# --- mutations -------------------------------------------------------------------------------

REJECT, ACCEPT, EITHER = "reject", "accept", "either"

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Mutant:
    """A body to send and what the server must do with it."""

    kind: str
    path: Path
    expect: str
    frame: str | bytes  # what goes on the wire

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def __repr__(self) -> str:
        cut = "..." if len(self.frame) > 300 else ""
        where = ".".join(map(str, self.path)) or "body"
        return f"Mutant({self.kind} at {where}, {self.expect}: {self.frame[:300]!r}{cut})"


Owner = tuple[str, str] | None  # (model, field) a value belongs to


def nodes(
    schema: Schema, value: Any, sub: dict[str, Any], path: Path = (), owner: Owner = None
) -> Iterator[tuple[Path, dict[str, Any], Any, Owner]]:
    """Every (path, schema, value, owner) inside a valid example, the example itself first."""
    sub = schema.resolve(sub)
    yield path, sub, value, owner
    if isinstance(value, dict):
        branch = _branch(schema, sub, value)
        props = branch.get("properties", {})
        extra = branch.get("additionalProperties")
        for key, item in value.items():
            inner = props.get(key, extra if isinstance(extra, dict) else {})
            mine = (branch.get("title", ""), key) if key in props else owner
            yield from nodes(schema, item, inner, (*path, key), mine)
    elif isinstance(value, list):
        branch = _branch(schema, sub, value)
        for i, item in enumerate(value):
            yield from nodes(schema, item, branch.get("items", {}), (*path, i), owner)


def _branch(schema: Schema, sub: dict[str, Any], value: Any) -> dict[str, Any]:
    """The branch of a union that ``value`` took (by the discriminator, else by JSON type)."""
    branches = sub.get("anyOf") or sub.get("oneOf")
    if not branches:
        return sub
    resolved = [schema.resolve(b) for b in branches]
    if isinstance(value, dict) and "type" in value:
        for b in resolved:
            if b.get("properties", {}).get("type", {}).get("const") == value["type"]:
                return b
    for b in resolved:
        if _json_type(value) in _types(schema, b):
            return b
    return sub


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _types(schema: Schema, sub: dict[str, Any]) -> set[str]:
    """The JSON types a schema admits; an empty set means any."""
    sub = schema.resolve(sub)
    if "const" in sub or "enum" in sub:
        values = sub.get("enum", [sub.get("const")])
        return {_json_type(v) for v in values}
    for key in ("anyOf", "oneOf"):
        if key in sub:
            out: set[str] = set()
            for b in sub[key]:
                t = _types(schema, b)
                if not t:
                    return set()
                out |= t
            return out
    kind = sub.get("type")
    if kind is None:
        return set()
    return {kind, "integer"} if kind == "number" else {kind}


def _set(value: Any, path: Path, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _set(value[head], rest, new)}
    copy = list(value)
    copy[head] = _set(copy[head], rest, new)  # type: ignore[index]
    return copy


def _drop(value: Any, path: Path) -> Any:
    head, rest = path[0], path[1:]
    if not rest:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k != head}
        return [v for i, v in enumerate(value) if i != head]
    if isinstance(value, dict):
        return {**value, head: _drop(value[head], rest)}
    copy = list(value)
    copy[head] = _drop(copy[head], rest)  # type: ignore[index]
    return copy


def _get(value: Any, path: Path) -> Any:
    for part in path:
        value = value[part]
    return value


def deep(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


# Values of each JSON type, written as JSON text: spliced in where a field's type forbids them.
WRONG_VALUES: dict[str, list[str]] = {
    "null": ["null"],
    "boolean": ["true", "false"],
    "integer": ["0", "1", "-1", "7"],
    "number": ["2.5", "-0.5"],
    "string": ['"5"', '"true"', '""', '"x"'],
    "array": ["[]", "[1]", '["en"]'],
    "object": ["{}", '{"a":1}'],
}

# Strings no field should take: a lone surrogate never encodes to UTF-8.
LONE_SURROGATES = ['"\\ud800"', '"a\\udfffb"', '"\\udc00\\ud800"']
# Odd strings, and what a field under the text rules (docs/protocol.md) must do with them;
# other fields may take them or not.
ODD_TEXT = [
    ('"a\\u0000b"', REJECT),  # NUL
    ('"\\u202eevil"', REJECT),  # right-to-left override
    ('"\\u2066x\\u2069"', REJECT),  # isolate
    ('"\\u001b[31m"', REJECT),  # an escape sequence
    ('"a\\u0085b"', REJECT),  # C1 next line
    ('"\\ud83d\\ude00"', ACCEPT),  # an emoji, non-BMP (a valid pair)
    ('"a\\ud83d\\ude00\\u200d\\ud83d\\udc69"', ACCEPT),  # joined emoji (ZWJ is allowed)
    ('"\\uffff"', EITHER),
    ('"\\u00a0"', EITHER),
    ('"  "', EITHER),
]
HUGE_NUMBERS = [
    "1e309",
    "-1e309",
    "NaN",
    "Infinity",
    "-Infinity",
    "1" + "0" * 30,
    "9" * 5000,
    "1e-400",
]


class Splice:
    """JSON text with one value replaced by raw JSON text (so NaN, deep nesting and lone
    surrogate escapes reach the server exactly as written)."""

    MARK = "\u0000SPLICE\u0000"

    @staticmethod
    def dumps(value: Any, path: Path, raw: str) -> str:
        marked = _set(value, path, Splice.MARK)
        text = json.dumps(marked)
        return text.replace(json.dumps(Splice.MARK), raw, 1)


@st.composite
def mutants(
    draw: st.DrawFn,
    schema: Schema,
    valid: st.SearchStrategy[Any],
    open_objects: bool,
    supplied: frozenset[str] = frozenset(),
) -> Mutant:
    """One hostile body, from a valid example. ``open_objects``: objects without
    ``additionalProperties: false`` ignore unknown fields (the WebSocket messages)."""
    value = draw(valid)
    found = list(nodes(schema, value, schema.root))
    path, sub, here, owner = draw(st.sampled_from(found))
    types = _types(schema, sub)
    kinds = ["wrong_type", "deep", "extra", "drop", "unicode", "huge"]
    kind = draw(st.sampled_from(kinds))
    if kind == "drop" and not path:
        kind = "wrong_type"
    if kind == "extra" and not isinstance(here, dict):
        kind = "wrong_type"

    if kind == "wrong_type":
        wrong = [t for t in WRONG_VALUES if types and t not in types]
        if not wrong:  # the field takes any JSON value
            kind = "deep"
        else:
            raw = draw(st.sampled_from(WRONG_VALUES[draw(st.sampled_from(wrong))]))
            return Mutant(kind, path, REJECT, Splice.dumps(value, path, raw))
    if kind == "deep":
        depth = draw(st.sampled_from([2000, 5000, 20000]))
        raw = deep(depth, draw(st.sampled_from(["list", "dict"])))
        return Mutant(f"deep{depth}", path, REJECT, Splice.dumps(value, path, raw))
    if kind == "extra":
        key = draw(
            st.one_of(
                text(1, 20),
                st.just("k" * 5000),
                st.sampled_from(["\u202ekey", "a\u0000b", "\U0001f600", "__proto__", ""]),
            )
        )
        extra_value = draw(st.one_of(st.integers(), text(), st.none()))
        closed = schema.resolve(sub).get("additionalProperties") is False or (
            _branch(schema, sub, here).get("additionalProperties") is False
        )
        if key in here:
            expect = EITHER
        elif closed:
            expect = REJECT
        else:
            expect = ACCEPT if open_objects and key.isprintable() else EITHER
        return Mutant(
            "extra", path, expect, json.dumps(_set(value, path, {**here, key: extra_value}))
        )
    if kind == "drop":
        parent_path, key = path[:-1], path[-1]
        parent_sub = schema.resolve(_schema_at(schema, value, parent_path))
        parent = _branch(schema, parent_sub, _get(value, parent_path))
        if isinstance(key, str):
            required = key in parent.get("required", [])
            # A field the route fills in itself (an id from the URL) may be left out.
            supplied_here = path == (key,) and key in supplied
            expect = REJECT if required and not supplied_here else EITHER
        else:
            items = len(_get(value, parent_path))
            expect = REJECT if items - 1 < parent.get("minItems", 0) else EITHER
        return Mutant("drop", path, expect, json.dumps(_drop(value, path)))
    if kind == "unicode":
        if "string" not in types and types:
            raw = draw(st.sampled_from(LONE_SURROGATES))
            return Mutant("unicode", path, REJECT, Splice.dumps(value, path, raw))
        if draw(st.booleans()):
            raw = draw(st.sampled_from(LONE_SURROGATES))
            return Mutant("lone_surrogate", path, REJECT, Splice.dumps(value, path, raw))
        raw, rule = draw(st.sampled_from(ODD_TEXT))
        if not path:  # a string where the message or body should be
            expect = REJECT
        elif owner in schema.text_fields and isinstance(here, str):
            expect = rule
        else:
            expect = EITHER
        return Mutant("odd_text", path, expect, Splice.dumps(value, path, raw))
    # huge
    branch = _branch(schema, sub, here)
    if isinstance(here, str) and "maxLength" in branch:
        over = branch["maxLength"] + draw(st.integers(1, 2000))
        return Mutant("too_long", path, REJECT, json.dumps(_set(value, path, "x" * over)))
    if isinstance(here, list) and "maxItems" in branch:
        many = here[:1] * (branch["maxItems"] + 1) if here else [None] * (branch["maxItems"] + 1)
        return Mutant("too_many", path, REJECT, json.dumps(_set(value, path, many)))
    if isinstance(here, (int, float)) and not isinstance(here, bool):
        raw = draw(st.sampled_from(HUGE_NUMBERS))
        bounded = "maximum" in branch and "minimum" in branch
        return Mutant(
            "huge_number", path, REJECT if bounded else EITHER, Splice.dumps(value, path, raw)
        )
    size = draw(st.sampled_from([5_000, 40_000]))
    expect = REJECT if not path or (types and "string" not in types) else EITHER
    return Mutant("huge_string", path, expect, json.dumps(_set(value, path, "\U0001f600" * size)))


def _schema_at(schema: Schema, value: Any, path: Path) -> dict[str, Any]:
    for p, sub, _, _ in nodes(schema, value, schema.root):
        if p == path:
            return sub
    raise KeyError(path)


@st.composite
def frame_mutants(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Mutant:
    """Hostile frames as a whole: not an object, cut short, duplicate keys, not UTF-8."""
    value = draw(valid)
    text_ = json.dumps(value)
    kind = draw(
        st.sampled_from(["not_object", "truncated", "duplicate_key", "bad_utf8", "garbage"])
    )
    if kind == "not_object":
        raw = draw(st.sampled_from(["[]", "1", '"hello"', "null", "true", json.dumps([value])]))
        return Mutant(kind, (), REJECT, raw)
    if kind == "truncated":
        cut = draw(st.integers(1, len(text_) - 1))
        return Mutant(kind, (), REJECT, text_[:cut])
    if kind == "duplicate_key":
        twin = draw(st.sampled_from(["null", "1", '"other"', "{}"]))
        if not value:  # nothing to repeat: an object with one unknown key, twice
            return Mutant(kind, ("x",), REJECT, f'{{"x": {twin}, "x": {twin}}}')
        key = draw(st.sampled_from(sorted(value)))
        dup = f"{{{json.dumps(key)}: {twin}, " + text_[1:]
        return Mutant(kind, (key,), REJECT, dup)
    if kind == "bad_utf8":
        return Mutant(kind, (), REJECT, text_.encode()[:-1] + b"\xff\xfe}")
    raw = draw(st.sampled_from(["", " ", "{", "}", "{]", "NaN", '{"type":}', "\u0000", "{'a':1}"]))
    return Mutant(kind, (), REJECT, raw)
