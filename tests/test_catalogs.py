"""The pages' message catalogs (clients/web/i18n/*.json) against the pages that use them.

A key is any string literal in the pages' JavaScript or HTML that starts with a catalog
namespace ("common.", "recipient.", ...), so keys kept in tables (reason -> key) count as used
too; file names and the protocol's message types ("agent.status") are not keys. Every key the
pages use must be in every catalog, every catalog key must be used, the plural forms must be
the language's (Intl.PluralRules, as CLDR lists them) and the placeholders the same as English.
docs/pages.md tells how to add a string or a language.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

from signaling import messages

WEB = Path(__file__).resolve().parent.parent / "clients" / "web"
CATALOGS = WEB / "i18n"
SHIPPED = ("en", "es", "ar")
NAMESPACES = ("common", "title", "index", "recipient", "volunteer", "agent", "sw")
# CLDR plural categories of the shipped languages (what Intl.PluralRules selects from).
PLURAL_FORMS = {
    "en": {"one", "other"},
    "es": {"one", "many", "other"},
    "ar": {"zero", "one", "two", "few", "many", "other"},
}
LITERAL = re.compile(r"""["'`]((?:""" + "|".join(NAMESPACES) + r""")\.[a-z0-9.-]+)["'`]""")
# data-i18n-attr="aria-label:key;title:key" (i18n.js translates attributes this way).
ATTRIBUTE_KEYS = re.compile(r'data-i18n-attr="([^"]*)"')
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def protocol_types() -> set[str]:
    """Every ``type`` of a wire message: strings the pages use that are not catalog keys."""
    types: set[str] = set()
    for model in vars(messages).values():
        fields = getattr(model, "model_fields", None)
        if not fields or "type" not in fields:
            continue
        types.update(a for a in typing.get_args(fields["type"].annotation) if isinstance(a, str))
    return types


def used_keys(sources: list[Path] | None = None) -> dict[str, set[str]]:
    """Catalog keys the pages use, each with the files that use it."""
    not_keys = protocol_types()
    found: dict[str, set[str]] = {}
    for path in (
        sources if sources is not None else sorted(WEB.glob("*.js")) + sorted(WEB.glob("*.html"))
    ):
        text = path.read_text(encoding="utf-8")
        keys = LITERAL.findall(text)
        for pairs in ATTRIBUTE_KEYS.findall(text):
            keys += [pair.split(":", 1)[1].strip() for pair in pairs.split(";") if ":" in pair]
        for key in keys:
            if key in not_keys or re.search(r"\.(html|js|json|css)$", key):
                continue
            found.setdefault(key, set()).add(path.name)
    return found


def catalog(lang: str) -> dict[str, object]:
    data = json.loads((CATALOGS / f"{lang}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def placeholders(value: object) -> set[str]:
    texts = value.values() if isinstance(value, dict) else [value]
    return {name for text in texts for name in PLACEHOLDER.findall(str(text))}


def test_the_scan_finds_keys_and_skips_file_names_and_message_types(tmp_path: Path) -> None:
    page = tmp_path / "page.js"
    page.write_text(
        'import x from "./recipient.js"; t("recipient.call"); send({type: "agent.status"});'
        " const M = { a: 'common.hang-up' }; `volunteer.ring.said`;"
        ' <video data-i18n-attr="aria-label:common.in-call.video; title:agent.heading">'
    )
    assert set(used_keys([page])) == {
        "recipient.call",
        "common.hang-up",
        "volunteer.ring.said",
        "common.in-call.video",
        "agent.heading",
    }
    assert "agent.status" in protocol_types()


def test_the_pages_use_catalog_keys() -> None:
    # A scan that found nothing would pass every check below.
    used = used_keys()
    assert len(used) > 200
    assert {"recipient.js", "volunteer.js", "agent.js", "sw.js", "recipient.html"} <= {
        name for files in used.values() for name in files
    }


@pytest.mark.parametrize("lang", SHIPPED)
def test_every_key_the_pages_use_is_in_the_catalog(lang: str) -> None:
    have = catalog(lang)
    missing = {key: sorted(files) for key, files in used_keys().items() if key not in have}
    assert missing == {}, f"{lang}.json lacks keys the pages use: {missing}"


@pytest.mark.parametrize("lang", SHIPPED)
def test_every_catalog_key_is_used_by_a_page(lang: str) -> None:
    unused = sorted(set(catalog(lang)) - set(used_keys()))
    assert unused == [], f"{lang}.json has keys no page uses: {unused}"


@pytest.mark.parametrize("lang", SHIPPED)
def test_messages_are_complete_with_the_same_placeholders_as_english(lang: str) -> None:
    english = catalog("en")
    mine = catalog(lang)
    assert set(mine) == set(english)
    for key, value in mine.items():
        if isinstance(english[key], dict):
            assert isinstance(value, dict), f"{lang} {key}: English has plural forms"
            assert set(value) == PLURAL_FORMS[lang], f"{lang} {key}: plural forms {set(value)}"
        else:
            assert isinstance(value, str) and value.strip(), f"{lang} {key} is empty"
        assert placeholders(value) <= placeholders(english[key]) | {"count"}, (
            f"{lang} {key}: unknown placeholder"
        )
        # Every placeholder but the count (which a plural form may spell out) is kept.
        assert placeholders(english[key]) - {"count"} <= placeholders(value), (
            f"{lang} {key} drops a placeholder"
        )


def test_a_missing_key_is_reported(tmp_path: Path) -> None:
    """The completeness check above is real: a page using a key no catalog has fails it."""
    page = tmp_path / "new.js"
    page.write_text('announce(t("volunteer.brand-new-words"));')
    assert "volunteer.brand-new-words" in used_keys([page])
    assert "volunteer.brand-new-words" not in catalog("en")
