// The pages' words in the person's language. Every user-facing string lives in a message catalog,
// clients/web/i18n/<language>.json, under a key such as "recipient.call" (docs/i18n.md tells how
// to add a string or a language). t(key, params) gives the text; a catalog value that is an
// object holds the plural forms of Intl.PluralRules ("zero", "one", "two", "few", "many",
// "other"), chosen by params.count. Numbers in params are formatted with Intl.NumberFormat.
//
// The language is the first shipped one among the user's profile languages (once signed in),
// then the browser's languages, then English. <html lang> and dir follow it (Arabic is right to
// left). A key missing from a catalog falls back to English, so that a string added to the
// pages before it is translated still says something; the tests fail on any missing key.

export const SHIPPED = ["en", "es", "ar"];
const RIGHT_TO_LEFT = new Set(["ar", "fa", "he", "ur"]);
const STORED = "vabroker.lang";

let language = "en";
let catalog = {};
let english = {};
let plurals = new Intl.PluralRules("en");
let numbers = new Intl.NumberFormat("en");

async function fetchCatalog(lang) {
  const response = await fetch(new URL(`i18n/${lang}.json`, import.meta.url));
  if (!response.ok) throw new Error(`the ${lang} catalog could not be loaded (${response.status})`);
  return response.json();
}

// The shipped language for a list of BCP 47 tags (the first that matches on its primary subtag).
export function pick(tags) {
  for (const tag of tags || []) {
    const primary = String(tag).split("-")[0].toLowerCase();
    if (SHIPPED.includes(primary)) return primary;
  }
  return null;
}

// Whether a catalog has been loaded (before that, t() has no words to give).
export function loaded() {
  return Object.keys(english).length > 0;
}

export function currentLanguage() {
  return language;
}

// Loads ``lang`` (or the remembered or the browser's language) and translates the page.
// ``remember`` keeps the choice on this device for the next page load (the profile's choice).
export async function useLanguage(lang = null, { remember = false } = {}) {
  const chosen =
    pick([lang]) || pick([localStorage.getItem(STORED)]) || pick(navigator.languages) || "en";
  if (!Object.keys(english).length) english = await fetchCatalog("en");
  catalog = chosen === "en" ? english : await fetchCatalog(chosen).catch(() => english);
  language = catalog === english ? "en" : chosen;
  plurals = new Intl.PluralRules(language);
  numbers = new Intl.NumberFormat(language);
  if (remember) localStorage.setItem(STORED, language);
  document.documentElement.lang = language;
  document.documentElement.dir = RIGHT_TO_LEFT.has(language) ? "rtl" : "ltr";
  translate(document);
  return language;
}

// The language from the signed-in user's profile (its first shipped call language).
export function fromProfile(profile) {
  return pick(profile && profile.languages);
}

export function t(key, params = {}) {
  let text = catalog[key] ?? english[key];
  if (text === undefined) {
    console.warn(`no message for ${key}`);
    return key;
  }
  if (typeof text === "object") {
    const count = Number(params.count ?? 0);
    text = text[plurals.select(count)] ?? text.other;
  }
  return text.replace(/\{(\w+)\}/g, (whole, name) => {
    const value = params[name];
    if (value === undefined || value === null) return whole;
    return typeof value === "number" ? numbers.format(value) : String(value);
  });
}

// Static text of the page: data-i18n="key" sets the text; data-i18n-attr holds
// attribute:key pairs separated by ";" (aria-label, title, placeholder).
export function translate(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) {
    // The live region keeps what it last said (its "Loading…" is only the first words).
    if (!el.dataset.said) el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":").map((s) => s.trim());
      if (attr && key) el.setAttribute(attr, t(key));
    }
  }
}

export function formatNumber(value) {
  return numbers.format(value);
}

export function formatDateTime(date, options = { dateStyle: "medium", timeStyle: "short" }) {
  return new Intl.DateTimeFormat(language, options).format(date);
}

// A language's name in the page's language ("Spanish", "español", "الإسبانية").
export function languageName(tag) {
  try {
    return new Intl.DisplayNames([language], { type: "language" }).of(String(tag)) || String(tag);
  } catch {
    return String(tag);
  }
}

// How long something has lasted, said the way a person would: "30 seconds", "2 minutes,
// 30 seconds". Under a minute in seconds; then minutes and half minutes.
export function duration(seconds) {
  const total = Math.max(0, Math.round(seconds));
  const parts = total < 60 ? { seconds: total } : { minutes: Math.floor(total / 60) };
  if (total >= 60 && total < 600 && total % 60 >= 30) parts.seconds = 30;
  if (typeof Intl.DurationFormat === "function") {
    return new Intl.DurationFormat(language, { style: "long" }).format(parts);
  }
  const said = [];
  if (parts.minutes) said.push(t("common.duration.minutes", { count: parts.minutes }));
  if (parts.seconds || !parts.minutes) said.push(t("common.duration.seconds", { count: parts.seconds || 0 }));
  return said.join(" ");
}
