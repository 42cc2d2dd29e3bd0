// The volunteer's lobby: while on duty, a live list of requests still searching in their
// languages and window (never who asked), each with a Take button (docs/protocol.md, "Lobby").
// The broker sends the whole list each time it changes; the page keeps the DOM of the entries
// that stay, so that keyboard focus stays on the same request, and says the count politely and
// sparingly in the page's live region, not at every change (docs/pages.md, "The lobby").

import { $, announce, languageName, t } from "./ui.js";

// At most one count said in this long, unless the volunteer asked (opening the lobby).
const SAY_EVERY_MS = 15000;
// How often the waiting times are brought up to date (their words change once a minute).
const TICK_MS = 5000;

const SEEN_STATES = new Set(["idle", "ended"]);

const listedCalls = (entries) => new Set(entries.map((entry) => entry.call));

// `page` holds the session and the duty state; `call` is the page's helperCall (its claim()
// asks for the call like an accept does).
export function lobbyView(page, call) {
  const lobby = {
    wanted: false, // the volunteer opened it (and has not closed it)
    active: false, // the broker is sending it now
    reopenAfterCall: false,
    entries: [],
    more: 0,
    receivedAt: 0,
    quiet: false, // opened by the page itself: its first count is not said
    taking: null, // the call being taken, while the broker has not answered
    refused: new Set(), // taken by someone else under our hands: gone without a word
    said: { total: null, at: 0, timer: null },
    ticker: null,
  };
  page.lobby = lobby; // for diagnostics and the browser tests

  const toggle = $("#lobby-toggle");
  const view = $("#lobby-view");
  const list = $("#lobby-list");

  const visible = () => lobby.wanted && SEEN_STATES.has(document.body.dataset.state);

  function countText() {
    const total = lobby.entries.length + lobby.more;
    return total === 0 ? t("volunteer.lobby.empty") : t("volunteer.lobby.count", { count: total });
  }

  // Said once a minute at most for each request: a name that changed every second would be
  // read out again and again on a focused Take button. Counted on from waiting_s as the broker
  // measured it, not from requested_at: this device's clock may be off.
  function waitingText(entry) {
    const seconds = entry.waiting_s + (Date.now() - lobby.receivedAt) / 1000;
    if (seconds < 60) return t("volunteer.lobby.waiting-new");
    return t("volunteer.lobby.waiting-minutes", { count: Math.floor(seconds / 60) });
  }

  function describe(entry) {
    return {
      language: languageName(entry.language),
      topic: entry.topic || t("volunteer.lobby.no-topic"),
      waiting: waitingText(entry),
    };
  }

  // One request: its language, its topic, how long it has waited, and its Take button, whose
  // name says which request it takes ("Take: English, reading a letter, waiting 2 minutes").
  function entryItem(entry) {
    const item = document.createElement("li");
    item.dataset.call = entry.call;
    const what = document.createElement("span");
    what.className = "lobby-what";
    const language = document.createElement("strong");
    language.className = "lobby-language";
    const topic = document.createElement("span");
    topic.className = "lobby-topic";
    what.append(language, " ", topic);
    const waiting = document.createElement("span");
    waiting.className = "lobby-waiting";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "lobby-take";
    button.textContent = t("volunteer.lobby.take");
    button.addEventListener("click", () => take(item.dataset.call));
    item.append(what, waiting, button);
    return item;
  }

  // Brings an item's words up to date, touching only what changed (a screen reader on the
  // button hears a new name only when the words really change).
  function fillItem(item, entry) {
    const words = describe(entry);
    const set = (element, text) => {
      if (element.textContent !== text) element.textContent = text;
    };
    set(item.querySelector(".lobby-language"), words.language);
    set(item.querySelector(".lobby-topic"), entry.topic ? words.topic : `(${words.topic})`);
    set(item.querySelector(".lobby-waiting"), words.waiting);
    const button = item.querySelector("button");
    const name = t("volunteer.lobby.take-named", { take: t("volunteer.lobby.take"), ...words });
    if (button.getAttribute("aria-label") !== name) button.setAttribute("aria-label", name);
    button.setAttribute("aria-disabled", String(lobby.taking !== null));
  }

  // Shows the list as the broker sent it. The items of requests still there are kept (and
  // never moved: the list is oldest first, so new ones only come in between or after), so
  // focus on one of them stays; focus on a request that went moves to its neighbour (the one
  // now in its place, else the one before), or to the heading when none is left.
  function render() {
    const focusedItem = document.activeElement && document.activeElement.closest("#lobby-list li");
    const focusedCall = focusedItem ? focusedItem.dataset.call : null;
    const focusedIndex = focusedItem ? [...list.children].indexOf(focusedItem) : -1;
    const kept = new Map([...list.children].map((item) => [item.dataset.call, item]));
    const wanted = listedCalls(lobby.entries);
    for (const [id, item] of kept) {
      if (!wanted.has(id)) {
        item.remove();
        kept.delete(id);
      }
    }
    lobby.entries.forEach((entry, index) => {
      let item = kept.get(entry.call);
      if (!item) {
        item = entryItem(entry);
        list.insertBefore(item, list.children[index] || null);
      }
      fillItem(item, entry);
    });
    list.hidden = lobby.entries.length === 0;
    $("#lobby-count").textContent = countText();
    const more = $("#lobby-more");
    more.hidden = lobby.more === 0;
    more.textContent = lobby.more ? t("volunteer.lobby.more", { count: lobby.more }) : "";

    if (focusedCall === null || wanted.has(focusedCall)) return false;
    const items = [...list.children];
    const neighbour = items[Math.min(focusedIndex, items.length - 1)];
    if (neighbour) neighbour.querySelector("button").focus();
    else $("#h-lobby").focus();
    return !lobby.refused.has(focusedCall);
  }

  // The count, said when it changed, and at most once in SAY_EVERY_MS: a change within that
  // time is said when it is over (if the count is still not the one said last).
  function sayCount({ now = false } = {}) {
    const said = lobby.said;
    clearTimeout(said.timer);
    said.timer = null;
    const total = lobby.entries.length + lobby.more;
    if (!visible() || (!now && total === said.total)) return;
    const wait = said.at + SAY_EVERY_MS - Date.now();
    if (!now && wait > 0) {
      said.timer = setTimeout(() => sayCount(), wait);
      return;
    }
    said.total = total;
    said.at = Date.now();
    announce(countText());
  }

  function onLobby(message) {
    if (message.closed) {
      onClosed(message.reason);
      return;
    }
    if (!lobby.wanted) return;
    const first = !lobby.active;
    lobby.active = true;
    lobby.entries = message.entries;
    lobby.more = message.more;
    lobby.receivedAt = Date.now();
    const lostFocus = render();
    for (const id of lobby.refused) {
      if (!listedCalls(lobby.entries).has(id)) lobby.refused.delete(id);
    }
    if (lostFocus && visible()) {
      // Where the volunteer was has gone: say so, with the count, whatever was said before.
      lobby.said.total = lobby.entries.length + lobby.more;
      lobby.said.at = Date.now();
      announce(t("volunteer.lobby.gone", { now: countText() }));
    } else if (first && lobby.quiet) {
      lobby.said = { total: lobby.entries.length + lobby.more, at: Date.now(), timer: null };
    } else if (first) {
      sayCount({ now: true });
    } else {
      sayCount();
    }
    startTicking();
  }

  function startTicking() {
    if (lobby.ticker) return;
    lobby.ticker = setInterval(() => {
      if (!lobby.active) return;
      for (const item of list.children) {
        const entry = lobby.entries.find((e) => e.call === item.dataset.call);
        if (entry) fillItem(item, entry);
      }
    }, TICK_MS);
  }

  function showToggle() {
    toggle.hidden = !page.onDuty;
    $("#lobby-off").hidden = page.onDuty;
    toggle.setAttribute("aria-expanded", String(lobby.wanted));
    toggle.textContent = t(lobby.wanted ? "volunteer.lobby.close" : "volunteer.lobby.open");
    view.hidden = !lobby.wanted;
  }

  function clear() {
    lobby.active = false;
    lobby.entries = [];
    lobby.more = 0;
    lobby.refused.clear();
    clearTimeout(lobby.said.timer);
    lobby.said = { total: null, at: 0, timer: null };
    clearInterval(lobby.ticker);
    lobby.ticker = null;
    list.replaceChildren();
    $("#lobby-notice").textContent = "";
  }

  // Asks the broker for the list; `quiet` when reopened by the page itself (after a call),
  // so that the count does not talk over what the page said about the call.
  async function open({ quiet = false } = {}) {
    lobby.wanted = true;
    showToggle();
    lobby.quiet = quiet;
    if (!lobby.active) $("#lobby-count").textContent = t("volunteer.lobby.loading");
    try {
      await page.session.request({ type: "lobby.open" });
    } catch (err) {
      lobby.wanted = false;
      clear();
      showToggle();
      announce(err.message);
    }
  }

  async function close() {
    lobby.wanted = false;
    clear();
    showToggle();
    announce(t("volunteer.lobby.hidden"));
    await page.session.request({ type: "lobby.close" }).catch(() => {});
  }

  // Take a request: like accepting a ring. On call.assigned the page goes to the call;
  // taken by someone else (or ended) first, the lobby stays and says so; not allowed, the
  // broker's words say why.
  async function take(id) {
    if (lobby.taking !== null || !lobby.entries.some((entry) => entry.call === id)) return;
    const entry = lobby.entries.find((e) => e.call === id);
    lobby.taking = id;
    $("#lobby-notice").textContent = "";
    for (const item of list.children) item.querySelector("button").setAttribute("aria-disabled", "true");
    try {
      await call.claim(
        { type: "call.take", call: id },
        t("volunteer.lobby.taking", { language: languageName(entry.language) }),
      );
    } catch (err) {
      const text = err.code === "conflict" ? t("volunteer.lobby.conflict") : err.message;
      if (err.code === "conflict") lobby.refused.add(id);
      $("#lobby-notice").textContent = text;
      lobby.said.at = Date.now(); // the count waits its turn behind this
      announce(text);
    } finally {
      lobby.taking = null;
      for (const item of list.children) item.querySelector("button").setAttribute("aria-disabled", "false");
    }
  }

  // In a call the broker closes the lobby; it opens again once the call is over, if it was
  // open before (docs/pages.md). The broker's closing message may come before call.assigned.
  function onAssigned() {
    lobby.reopenAfterCall ||= lobby.wanted;
    lobby.wanted = false;
    clear();
    showToggle();
  }

  function callEnded() {
    if (!lobby.reopenAfterCall) return;
    lobby.reopenAfterCall = false;
    if (page.onDuty) open({ quiet: true });
  }

  // Off duty (by the switch or a suspension) the broker closes the lobby: so does the page.
  function dutyChanged() {
    if (!page.onDuty) {
      lobby.wanted = false;
      lobby.reopenAfterCall = false;
      clear();
    }
    showToggle();
  }

  // The broker closed the lobby by itself: off duty or suspended (the duty switch follows and
  // says why, from the availability message), or in a call (reopened after it).
  function onClosed(reason) {
    if (!lobby.wanted) return;
    if (reason === "in_call") lobby.reopenAfterCall = true;
    lobby.wanted = false;
    clear();
    showToggle();
  }

  function register(session) {
    session.on("lobby", onLobby).on("call.assigned", onAssigned);
    // A resumed session watches no more (docs/protocol.md): open it again, without a word.
    const notice = session.onConnection;
    session.onConnection = (state) => {
      notice(state);
      if (state === "open" && lobby.wanted) open({ quiet: true });
    };
  }

  // Made before the catalogs are loaded: the HTML's words stand until dutyChanged().
  toggle.addEventListener("click", () => (lobby.wanted ? close() : open()));

  return { register, dutyChanged, callEnded, onClosed };
}
