"""JSON from clients: the one decoder for WebSocket frames and REST bodies.

The rules on top of RFC 8259, each refused with a message naming what was wrong:

- Nesting is at most ``MAX_DEPTH`` arrays and objects deep. The real messages are at most about
  six deep (an organisation's hours); a limit far above that costs nothing, and it is checked by
  a linear scan of the text before parsing, so no recursive code ever sees a hostile document
  (the standard decoder and every re-serialisation recurse once per level).
- Bytes are UTF-8 (RFC 8259 section 8.1); ``NaN`` and ``Infinity`` are not JSON numbers, and a
  number a double cannot hold (``1e400``, or ``1e-400``, which is not zero) is refused rather
  than turned into infinity or 0.0 (RFC 8259 section 6 leaves such numbers to the parser).
- No string, key or value, holds an unpaired UTF-16 surrogate (``"\\ud800"`` written as an
  escape): such text cannot be encoded as UTF-8, so it could neither be stored nor sent on to
  another person. A correctly paired escape (an emoji written as two escapes) is fine.
- No object names a key twice. RFC 8259 leaves the meaning of a repeated key open (the standard
  decoder keeps the last one, other parsers the first), so a document with one could mean one
  thing to the broker and another to whatever checked or logged it first.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64

# A JSON string: a quote, then anything but a quote or a backslash, or a backslash and any one
# character, then a quote (the "unrolled loop" form: linear, no catastrophic backtracking).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
# An escape that may decode to a surrogate; without one no decoded string can hold a surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonRejected(ValueError):
    """Text that is not acceptable JSON; ``str()`` says why, for a person, as the end of a
    sentence ("The body " + it). ``document`` is the
    parsed value when the text parsed but broke a rule (so that a caller can still read, e.g.,
    a request's ``ref``)."""

    def __init__(self, message: str, document: Any = None) -> None:
        super().__init__(message)
        self.document = document


def depth_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than ``limit`` deep, brackets inside strings aside.
    Stops at the first bracket past the limit."""
    # Nesting is at most the number of opening brackets (those inside strings included): a
    # count, done in C, clears almost every text without looking at its strings.
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def unpaired_surrogate(document: Any) -> str | None:
    """The path (``a.b.0``) of the first string holding an unpaired surrogate, or None. Walks
    the document with a stack, not recursion."""
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path or "(the document)"
        elif isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if _SURROGATE.search(key):
                    return (path + "." if path else "") + "(a key)"
                stack.append((where, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return None


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _OutOfRange(ValueError):
    pass


_NONZERO_MANTISSA = re.compile(r"^-?0*\.?0*[1-9]")


def _number(literal: str) -> float:
    """A JSON number with a fraction or exponent, refused when a double cannot hold it: one
    too large would become infinity, and one too small but not zero (``1e-400``) would become
    0.0, a value the client did not send."""
    value = float(literal)
    mantissa = re.split("[eE]", literal, maxsplit=1)[0]
    if math.isinf(value) or (value == 0.0 and _NONZERO_MANTISSA.match(mantissa)):
        raise _OutOfRange(literal)
    return value


# One decoder for every document: json.loads with these hooks would build a new one each call.
_DECODER = json.JSONDecoder(
    parse_constant=_no_constant, parse_float=_number, object_pairs_hook=_unique_keys
)


def decode(data: str | bytes) -> Any:
    """Parse client JSON under the rules above; ``JsonRejected`` otherwise."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRejected(f"is not UTF-8 text: {exc.reason} at byte {exc.start}.") from None
    else:
        text = data
    if depth_exceeds(text):
        raise JsonRejected(f"nests arrays and objects more than {MAX_DEPTH} deep (the limit).")
    try:
        document = _DECODER.decode(text)
    except _RepeatedKey as exc:
        key = str(exc.args[0])
        shown = repr(key if len(key) <= 64 else key[:64] + "...")
        raise JsonRejected(
            f"names the key {shown} twice in one object; send each key once."
        ) from None
    except _OutOfRange as exc:
        number = str(exc.args[0])
        shown = number if len(number) <= 40 else number[:40] + "..."
        raise JsonRejected(
            f"has the number {shown}, which is out of range (a double holds about 1e-308 to "
            "1e308); send it within the field's limits."
        ) from None
    except ValueError as exc:
        raise JsonRejected(f"is not valid JSON: {exc}.") from None
    if _SURROGATE_ESCAPE.search(text):
        where = unpaired_surrogate(document)
        if where is not None:
            raise JsonRejected(
                f"has an unpaired UTF-16 surrogate (a lone \\ud800-\\udfff escape, which is not "
                f"a character) in {where}.",
                document,
            )
    return document
