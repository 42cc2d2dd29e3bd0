// The volunteer's service worker: shows a ring pushed by the broker (Web Push) while no page of
// the service is open, and replaces it with its withdrawal: both carry the call id as their tag
// (docs/protocol.md, "Payloads"). Its scope is the pages' folder, so it covers volunteer.html.
// The page registers it as sw.js?lang=LL so that it speaks the volunteer's language; its words
// come from the same message catalogs as the pages (keys "sw.…").

const LANG = new URL(self.location.href).searchParams.get("lang") || "en";
let words = null;

async function catalog() {
  if (words) return words;
  const load = async (lang) => {
    const response = await fetch(new URL(`i18n/${lang}.json`, self.location.href));
    if (!response.ok) throw new Error(`no ${lang} catalog`);
    return response.json();
  };
  const english = await load("en");
  const own = /^[a-z]{2,3}$/.test(LANG) && LANG !== "en" ? await load(LANG).catch(() => ({})) : {};
  words = { ...english, ...own };
  return words;
}

function say(all, key, params = {}) {
  return String(all[key] || key).replace(/\{(\w+)\}/g, (whole, name) => params[name] ?? whole);
}

function languageName(tag) {
  try {
    return new Intl.DisplayNames([LANG], { type: "language" }).of(tag) || tag;
  } catch {
    return tag;
  }
}

const WITHDRAWN = {
  answered: "sw.withdrawn.answered",
  cancelled: "sw.withdrawn.cancelled",
  expired: "sw.withdrawn.expired",
  declined: "sw.withdrawn.declined",
};

// What to show for a push, or null when it is not one of the broker's.
async function notificationFor(push) {
  if (!push || typeof push.call !== "string" || !push.call) return null;
  const all = await catalog();
  if (push.type === "call.ring") {
    const language = typeof push.language === "string" ? languageName(push.language) : "";
    const body = push.topic
      ? say(all, "sw.ring.body-topic", { language, topic: String(push.topic) })
      : say(all, "sw.ring.body", { language });
    return {
      title: say(all, "sw.ring.title"),
      options: { body, tag: push.call, renotify: true, requireInteraction: true, lang: LANG, data: { call: push.call, kind: "ring" } },
    };
  }
  if (push.type === "call.withdrawn") {
    const key = WITHDRAWN[push.reason] || "sw.withdrawn.other";
    return {
      title: say(all, "sw.withdrawn.title"),
      options: { body: say(all, key), tag: push.call, renotify: false, silent: true, lang: LANG, data: { call: push.call, kind: "withdrawn" } },
    };
  }
  return null;
}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let push = null;
  try {
    push = event.data ? event.data.json() : null;
  } catch {
    push = null;
  }
  event.waitUntil(
    (async () => {
      const shown = await notificationFor(push);
      // A push must show something (userVisibleOnly); an unknown one says the service called.
      if (shown) await self.registration.showNotification(shown.title, shown.options);
      else {
        const all = await catalog();
        await self.registration.showNotification(say(all, "sw.ring.title"), { tag: "vabroker", lang: LANG });
      }
    })(),
  );
});

// A click opens (or brings forward) the volunteer page, where the ring can be answered.
self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(
    (async () => {
      const target = new URL("volunteer.html", self.registration.scope).href;
      const open = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      const page = open.find((client) => client.url.split("#")[0] === target);
      if (page) return page.focus();
      return self.clients.openWindow(target);
    })(),
  );
});
