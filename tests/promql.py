"""Enough of PromQL to check an operator's files without Prometheus: a tokenizer that refuses
what PromQL would refuse in the expressions we write (unbalanced brackets, bad label matchers,
bad durations, unknown functions), and the metric names an expression reads.

Not a full parser: it checks the lexical structure and the roles of names (metric, function,
aggregation, keyword, label), which is what a renamed or misspelt metric breaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FUNCTIONS = frozenset(
    """abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min
    count_over_time day_of_month day_of_week days_in_month delta deriv exp floor
    histogram_quantile holt_winters hour idelta increase irate label_join label_replace last_over_time
    ln log10 log2 max_over_time min_over_time minute month predict_linear
    present_over_time quantile_over_time rate resets round scalar sgn sort sort_desc sqrt
    stddev_over_time stdvar_over_time sum_over_time time timestamp vector year""".split()
)
AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile".split()
)
KEYWORDS = frozenset(
    "by without on ignoring group_left group_right bool and or unless offset".split()
)
LABEL_LISTS = frozenset("by without on ignoring group_left group_right".split())
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
GRAFANA_RANGE = re.compile(r"^\$__(rate_interval|interval|range)$")
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
NUMBER = re.compile(r"(0x[0-9a-fA-F]+|\d+\.?\d*(e[+-]?\d+)?|\.\d+(e[+-]?\d+)?)")
OPERATORS = ("==", "!=", ">=", "<=", "=~", "!~", "+", "-", "*", "/", "%", "^", ">", "<", ",")


class PromQLError(ValueError):
    pass


@dataclass(frozen=True)
class Token:
    kind: str  # name, number, string, op, open, close, matchers, range
    text: str


def _string_end(expr: str, i: int) -> int:
    quote = expr[i]
    j = i + 1
    while j < len(expr):
        if expr[j] == "\\" and quote != "`":
            j += 2
            continue
        if expr[j] == quote:
            return j + 1
        j += 1
    raise PromQLError(f"unterminated string at {i}: {expr[i : i + 20]!r}")


def _check_matchers(body: str, expr: str) -> None:
    """``{label="value", ...}``: each a label, an operator and a quoted string."""
    rest = body.strip()
    while rest:
        m = re.match(
            r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\'[^\']*\')', rest
        )
        if not m:
            raise PromQLError(f"bad label matcher {rest[:30]!r} in {expr!r}")
        if m.group(2) in ("=~", "!~"):
            try:
                re.compile(m.group(3)[1:-1])
            except re.error as exc:
                raise PromQLError(
                    f"bad regular expression {m.group(3)} in {expr!r}: {exc}"
                ) from None
        rest = rest[m.end() :].strip()
        if rest.startswith(","):
            rest = rest[1:].strip()
        elif rest:
            raise PromQLError(f"expected ',' between label matchers in {expr!r}")


def _check_range(body: str, expr: str) -> None:
    """``[5m]`` or a subquery ``[1h:1m]`` / ``[1h:]``."""
    parts = body.split(":")
    if len(parts) > 2:
        raise PromQLError(f"bad range [{body}] in {expr!r}")
    for n, part in enumerate(parts):
        part = part.strip()
        if n == 1 and part == "":
            continue
        if not (DURATION.match(part) or GRAFANA_RANGE.match(part)):
            raise PromQLError(f"bad duration {part!r} in [{body}] of {expr!r}")


def tokens(expr: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    depth: list[str] = []
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":
            raise PromQLError(f"comment inside an expression: {expr!r}")
        elif c in "\"'`":
            j = _string_end(expr, i)
            out.append(Token("string", expr[i:j]))
            i = j
        elif c == "{":
            j = expr.find("}", i)
            if j < 0:
                raise PromQLError(f"unclosed '{{' in {expr!r}")
            _check_matchers(expr[i + 1 : j], expr)
            out.append(Token("matchers", expr[i : j + 1]))
            i = j + 1
        elif c == "[":
            j = expr.find("]", i)
            if j < 0:
                raise PromQLError(f"unclosed '[' in {expr!r}")
            _check_range(expr[i + 1 : j], expr)
            out.append(Token("range", expr[i : j + 1]))
            i = j + 1
        elif c == "(":
            depth.append("(")
            out.append(Token("open", c))
            i += 1
        elif c == ")":
            if not depth:
                raise PromQLError(f"unbalanced ')' in {expr!r}")
            depth.pop()
            out.append(Token("close", c))
            i += 1
        elif c in "}]":
            raise PromQLError(f"unbalanced {c!r} in {expr!r}")
        elif (m := NUMBER.match(expr, i)) and not NAME.match(expr, i):
            j = m.end()
            unit = re.match(r"(ms|s|m|h|d|w|y)+", expr[j:])  # a bare duration (offset 5m)
            if unit:
                j += unit.end()
            out.append(Token("number", expr[i:j]))
            i = j
        elif m := NAME.match(expr, i):
            out.append(Token("name", m.group()))
            i = m.end()
        else:
            op = next((o for o in OPERATORS if expr.startswith(o, i)), None)
            if op is None:
                raise PromQLError(f"unexpected {c!r} at {i} in {expr!r}")
            out.append(Token("op", op))
            i += len(op)
    if depth:
        raise PromQLError(f"unclosed '(' in {expr!r}")
    if not out:
        raise PromQLError("empty expression")
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads; raises PromQLError if it is not well formed."""
    toks = tokens(expr)
    names: set[str] = set()
    i = 0
    while i < len(toks):
        tok = toks[i]
        following = toks[i + 1] if i + 1 < len(toks) else None
        if tok.kind != "name":
            i += 1
            continue
        word = tok.text
        if word in ("group_left", "group_right") and (
            following is None or following.kind != "open"
        ):
            i += 1  # their label list is optional
            continue
        if word in LABEL_LISTS:
            # by (a, b): label names, not metrics
            if following is None or following.kind != "open":
                raise PromQLError(f"{word} needs a label list in {expr!r}")
            j = i + 2
            expect_label = True
            while j < len(toks) and toks[j].kind != "close":
                t = toks[j]
                if expect_label and not (t.kind == "name" and LABEL.match(t.text)):
                    raise PromQLError(f"bad label list after {word}: {t.text!r} in {expr!r}")
                if not expect_label and not (t.kind == "op" and t.text == ","):
                    raise PromQLError(f"bad label list after {word}: {t.text!r} in {expr!r}")
                expect_label = not expect_label
                j += 1
            i = j + 1
            continue
        if word in KEYWORDS or word.lower() in ("inf", "nan"):
            i += 1
            continue
        if word in AGGREGATIONS:
            if following is None or not (
                following.kind == "open"
                or (following.kind == "name" and following.text in ("by", "without"))
            ):
                raise PromQLError(f"aggregation {word} without its operand in {expr!r}")
            i += 1
            continue
        if following is not None and following.kind == "open":
            if word not in FUNCTIONS:
                raise PromQLError(f"unknown function {word}() in {expr!r}")
            i += 1
            continue
        names.add(word)
        i += 1
    return names


def exported_names(exposition: str) -> set[str]:
    """The metric names a Prometheus text exposition offers to queries: every sample's name, and
    for each family declared by ``# TYPE`` (even one without samples yet) the names its samples
    will have."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            elif kind == "summary":
                names |= {name + "_sum", name + "_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
        elif line and not line.startswith("#"):
            m = NAME.match(line)
            if m:
                names.add(m.group())
    return names
