// The volunteer's page: go on duty, hear and see a ring (also in a background tab, and by Web
// Push when the page is closed), accept or decline, see the caller's camera and talk back, and
// look at past calls.

import { markScrollable } from "./charts.js";
import { helperCall } from "./helper.js";
import { lobbyView } from "./lobby.js";
import { currentLanguage, formatDateTime, formatNumber } from "./i18n.js";
import { RING, Tone, unlockAudio } from "./sound.js";
import {
  $,
  announce,
  languageName,
  loadProfile,
  restrictionNotice,
  setSwitch,
  showState,
  startLanguage,
  startSession,
  suspendedNotice,
  t,
} from "./ui.js";

const page = {
  session: null,
  ring: null,
  callId: null,
  media: null,
  mic: null,
  onDuty: false,
  ringSound: new Tone(RING, { storageKey: "vabroker.ring-sound", gain: 0.15 }),
  notification: null, // the system notification of the ring shown now, if any
  push: "unknown", // Web Push on this browser: "on", "off" (not offered) or "unknown"
};
const call = helperCall(page);
const lobby = lobbyView(page, call);
window.vabrokerPage = page; // for diagnostics and the browser tests

const WITHDRAWN = {
  answered: () => t("volunteer.withdrawn.answered"),
  cancelled: () => t("volunteer.withdrawn.cancelled"),
  expired: () => t("volunteer.withdrawn.expired"),
  declined: () => t("volunteer.withdrawn.declined"),
};

const ENDED = {
  completed: (by) => t(by === "volunteer" || by === "agent" ? "common.ended.you-hung-up" : "common.ended.caller-ended"),
  cancelled: () => t("common.ended.cancelled"),
  peer_lost: () => t("common.ended.peer-lost"),
  failed: () => t("common.ended.failed"),
};

function waitingText() {
  return page.onDuty ? t("volunteer.duty.on") : t("volunteer.duty.off");
}

async function setDuty(onDuty) {
  unlockAudio(); // this click lets the page ring aloud later, also in a background tab
  try {
    const answer = await page.session.request({ type: "availability", available: onDuty });
    page.onDuty = answer.available;
  } catch (err) {
    announce(err.message);
    return;
  }
  setSwitch($("#duty"), page.onDuty);
  lobby.dutyChanged();
  if (page.onDuty && "Notification" in window && Notification.permission === "default") {
    // Explained first, then asked: a bare browser prompt is easy to refuse by mistake.
    $("#notify-ask").hidden = false;
    announce(t("volunteer.notify.on-duty-ask", { waiting: waitingText() }));
    $("#h-notify-ask").focus();
    return;
  }
  announce(waitingText());
  if (page.onDuty) enablePush();
}

// The broker took the volunteer off duty (a suspension): the switch follows, and they hear why.
function onAvailabilityFromBroker(message) {
  if (message.ref || message.available === page.onDuty) return;
  page.onDuty = message.available;
  setSwitch($("#duty"), page.onDuty);
  lobby.dutyChanged();
  announce(message.reason === "suspended" ? t("volunteer.duty.suspended", { why: suspendedNotice() }) : waitingText());
}

// --- rings that reach a busy volunteer --------------------------------------------------------

async function notificationsAllowed() {
  $("#notify-ask").hidden = true;
  let answer = Notification.permission;
  try {
    answer = await Notification.requestPermission();
  } catch {
    // an older browser: the permission stays as it was
  }
  showNotifyStatus();
  announce(answer === "granted" ? t("volunteer.notify.granted") : t("volunteer.notify.refused"));
  $("#duty").focus();
  if (answer === "granted") enablePush();
}

function showNotifyStatus() {
  const supported = "Notification" in window;
  const permission = supported ? Notification.permission : "denied";
  let text;
  if (!supported) text = t("volunteer.notify.unsupported");
  else if (permission === "denied") text = t("volunteer.notify.denied");
  else if (permission === "default") text = t("volunteer.notify.not-yet");
  else if (page.push === "on") text = t("volunteer.notify.push-on");
  else text = t("volunteer.notify.tab-only");
  $("#notify-status").textContent = text;
  $("#notify-enable").hidden = !(supported && permission === "default");
}

// The service worker (sw.js, scope: the pages) shows rings pushed while the page is closed.
// Its URL carries the language, so that it speaks the volunteer's language too.
async function worker() {
  if (!("serviceWorker" in navigator)) return null;
  await navigator.serviceWorker.register(`sw.js?lang=${currentLanguage()}`);
  return navigator.serviceWorker.ready;
}

function b64urlBytes(text) {
  const raw = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

// Subscribes this browser to Web Push with the broker's VAPID key and registers it as one of
// the volunteer's devices, so that a ring reaches them when the page is closed. A broker that
// sends no Web Push (404) or a browser without a push service leaves rings to the open page.
async function enablePush() {
  try {
    const registration = await worker();
    if (!registration || !("PushManager" in window) || Notification.permission !== "granted") return;
    const keyResponse = await page.session.api("/v1/push/webpush");
    if (!keyResponse.ok) {
      page.push = "off";
      return;
    }
    const { public_key: key } = await keyResponse.json();
    const subscription =
      (await registration.pushManager.getSubscription()) ||
      (await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64urlBytes(key) }));
    const json = subscription.toJSON();
    const added = await page.session.api("/v1/me/devices", {
      method: "POST",
      body: { platform: "webpush", subscription: { endpoint: json.endpoint, keys: json.keys } },
    });
    page.push = added.ok ? "on" : "off";
    if (!added.ok) console.warn("the broker refused this browser's push subscription", await added.text());
  } catch (err) {
    page.push = "off";
    console.warn("Web Push is not available here:", err.message);
  } finally {
    showNotifyStatus();
  }
}

// A ring while the page is not in front: a system notification (tagged with the call, so that
// the withdrawal replaces it), besides the title and the sound, which every ring has.
async function notifyRing(ring, text) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  if (document.visibilityState === "visible") return;
  const options = { body: text, tag: ring.call, requireInteraction: true, renotify: true, lang: currentLanguage() };
  const registration = "serviceWorker" in navigator ? await navigator.serviceWorker.getRegistration() : null;
  if (registration) {
    await registration.showNotification(t("volunteer.notify.ring-title"), { ...options, data: { url: location.pathname } });
  } else {
    const shown = new Notification(t("volunteer.notify.ring-title"), options);
    shown.onclick = () => {
      window.focus();
      shown.close();
    };
    page.notification = shown;
  }
}

async function clearRingNotification(callId) {
  if (page.notification) page.notification.close();
  page.notification = null;
  const registration = "serviceWorker" in navigator ? await navigator.serviceWorker.getRegistration() : null;
  if (!registration) return;
  for (const shown of await registration.getNotifications({ tag: callId })) shown.close();
}

function ringStopped(callId) {
  page.ringSound.stop();
  clearRingNotification(callId).catch(() => {});
}

function onRing(ring) {
  if (page.callId) return; // busy: the broker does not ring someone in a call
  page.ring = ring;
  const from = ring.requester.display_name || t("common.ring.a-caller");
  $("#ring-from").textContent = from;
  $("#ring-language").textContent = languageName(ring.language);
  $("#ring-topic").textContent = ring.topic || t("common.ring.no-topic");
  $("#ring-note").textContent = ring.note || t("common.ring.no-note");
  showReading(ring.reading, ".ring-reading", "#ring-reading");
  // Said once, not counted down aloud: a ticking live region would drown the screen reader.
  const until = new Date(Date.now() + ring.expires_in_s * 1000);
  $("#ring-expires").textContent = t("volunteer.ring.until", {
    time: formatDateTime(until, { hour: "numeric", minute: "2-digit", second: "2-digit" }),
  });
  showState("ringing");
  const text = ring.topic
    ? t("volunteer.ring.said-topic", { name: from, topic: ring.topic, language: languageName(ring.language) })
    : t("volunteer.ring.said", { name: from, language: languageName(ring.language) });
  const said = ring.circle === true ? `${text} ${t("volunteer.ring.in-circle")}` : text;
  announce(said);
  page.ringSound.start();
  notifyRing(ring, said).catch((err) => console.warn("no notification:", err.message));
}

// A handover from the automatic reader: what it read, if the recipient shared it. Shown with
// the ring and through the call, as plain text (it came from another person's device).
function showReading(reading, boxes, text) {
  const shown = typeof reading === "string" && reading.length > 0;
  for (const box of document.querySelectorAll(boxes)) box.hidden = !shown;
  $(text).textContent = shown ? reading : "";
}

function onAssigned(assigned) {
  if (page.media) return;
  showReading(assigned.reading, "#call-reading", "#call-reading-text");
  call.onAssigned(assigned);
}

function onWithdrawn(message) {
  if (!page.ring || message.call !== page.ring.call) return;
  page.ring = null;
  ringStopped(message.call);
  showState("idle");
  announce((WITHDRAWN[message.reason] || (() => t("volunteer.withdrawn.other")))());
}

function accept() {
  const ring = page.ring;
  if (ring) ringStopped(ring.call);
  return call.accept(t("volunteer.ring.accepting"), t("volunteer.withdrawn.answered"));
}

async function decline() {
  const ring = page.ring;
  if (!ring) return;
  page.ring = null;
  ringStopped(ring.call);
  await page.session.request({ type: "call.decline", call: ring.call }).catch(() => {});
  showState("idle");
  announce(t("volunteer.ring.declined", { waiting: waitingText() }));
}

function onEnded(message) {
  const text = call.endCall(message, ENDED);
  if (text === null) return;
  showReading(null, "#call-reading", "#call-reading-text");
  showState("ended");
  announce(t("volunteer.ended.said", { reason: text, waiting: waitingText() }));
  history();
  impact();
  lobby.callEnded();
}

const COLUMNS = [
  ["requested", "volunteer.history.requested"],
  ["language", "volunteer.history.language"],
  ["topic", "volunteer.history.topic"],
  ["duration_s", "volunteer.history.length"],
  ["reason", "volunteer.history.outcome"],
];

const OUTCOMES = {
  completed: "volunteer.outcome.completed",
  cancelled: "volunteer.outcome.cancelled",
  no_answer: "volunteer.outcome.no-answer",
  peer_lost: "volunteer.outcome.peer-lost",
  failed: "volunteer.outcome.failed",
  closed: "volunteer.outcome.closed",
};

function cellText(key, value) {
  if (value === null || value === undefined || value === "") return "";
  if (key === "requested") return formatDateTime(new Date(value));
  if (key === "language") return languageName(value);
  if (key === "duration_s") return typeof value === "number" ? formatNumber(value) : String(value);
  if (key === "reason") return OUTCOMES[value] ? t(OUTCOMES[value]) : String(value);
  return String(value);
}

async function history() {
  const box = $("#history");
  const response = await page.session.api("/v1/me/calls").catch(() => null);
  const say = (key, muted = false) => {
    const p = document.createElement("p");
    if (muted) p.className = "muted";
    p.textContent = t(key);
    box.replaceChildren(p);
  };
  if (!response || !response.ok) {
    say("volunteer.history.failed");
    return;
  }
  const { calls } = await response.json();
  if (!calls.length) {
    say("volunteer.history.none", true);
    return;
  }
  // A table wider than a narrow screen scrolls inside a region named by its caption, which
  // the keyboard can reach (markScrollable); the page itself never scrolls sideways.
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  const table = document.createElement("table");
  const caption = table.createCaption();
  caption.id = "history-caption";
  caption.textContent = t("volunteer.history.caption", { count: calls.length });
  const head = table.createTHead().insertRow();
  for (const [, title] of COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = t(title);
    head.append(th);
  }
  const body = table.createTBody();
  for (const item of calls) {
    const row = body.insertRow();
    for (const [key] of COLUMNS) row.insertCell().textContent = cellText(key, item[key]);
  }
  wrap.append(table);
  box.replaceChildren(wrap);
  markScrollable(box);
}

async function download(path, filename) {
  const response = await page.session.api(path, { accept: "text/csv" }).catch(() => null);
  if (!response || !response.ok) return false;
  // The API needs the token in a header, so the file is fetched here and handed to the browser.
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return true;
}

async function exportCsv() {
  if (await download("/v1/me/calls?format=csv", "calls.csv")) announce(t("volunteer.history.csv-done"));
  else announce(t("volunteer.history.csv-failed"));
}

const IMPACT_COLUMNS = [
  ["month", "volunteer.impact.month"],
  ["calls", "volunteer.impact.calls-answered"],
  ["minutes", "volunteer.impact.minutes"],
  ["people", "volunteer.impact.people"],
];

// "You have answered 3 calls: 12.5 minutes of help for 2 people, in English and Portuguese,
// since 3 May 2026."
function impactText(impact) {
  if (!impact.calls_answered) return t("volunteer.impact.none");
  const languages = new Intl.ListFormat(currentLanguage(), { type: "conjunction" }).format(
    impact.languages.map(languageName),
  );
  return t("volunteer.impact.summary", {
    calls: t("volunteer.impact.count-calls", { count: impact.calls_answered }),
    minutes: t("volunteer.impact.count-minutes", { count: impact.minutes_helped }),
    people: t("volunteer.impact.count-people", { count: impact.people_helped }),
    languages,
    since: formatDateTime(new Date(impact.first_call), { dateStyle: "long" }),
  });
}

// A month of the record ("2026-05") in the page's language ("May 2026").
function monthText(month) {
  const [year, number] = String(month).split("-").map(Number);
  if (!year || !number) return String(month);
  return formatDateTime(new Date(year, number - 1, 1), { year: "numeric", month: "long" });
}

async function impact() {
  const summary = $("#impact-summary");
  const box = $("#impact-months");
  const response = await page.session.api("/v1/me/impact").catch(() => null);
  if (!response || !response.ok) {
    summary.textContent = t("volunteer.impact.failed");
    box.replaceChildren();
    return;
  }
  const record = await response.json();
  summary.textContent = impactText(record);
  if (!record.by_month.length) {
    box.replaceChildren();
    return;
  }
  // Scrolls inside a region named by its caption on a narrow screen, like the calls' table.
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  const table = document.createElement("table");
  const caption = table.createCaption();
  caption.id = "impact-caption";
  caption.textContent = t("volunteer.impact.caption");
  const head = table.createTHead().insertRow();
  for (const [, title] of IMPACT_COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = t(title);
    head.append(th);
  }
  const body = table.createTBody();
  for (const month of record.by_month) {
    const row = body.insertRow();
    for (const [key] of IMPACT_COLUMNS) {
      const value = month[key];
      row.insertCell().textContent =
        key === "month" ? monthText(value) : typeof value === "number" ? formatNumber(value) : String(value ?? "");
    }
  }
  wrap.append(table);
  box.replaceChildren(wrap);
  markScrollable(box);
}

async function exportImpact() {
  if (await download("/v1/me/impact?format=csv", "impact.csv")) announce(t("volunteer.impact.csv-done"));
  else announce(t("volunteer.impact.csv-failed"));
}

// --- Your outlook: GET /v1/me/outlook said in words, a table by language, what would help ---

const OUTLOOK_COLUMNS = [
  ["language", "volunteer.outlook.language"],
  ["sharing_window", "volunteer.outlook.sharing"],
  ["requests_30d", "volunteer.outlook.requests"],
  ["place", "volunteer.outlook.place"],
  ["calls_per_week", "volunteer.outlook.calls-per-week"],
];

// "While you are on duty, your next call is likely within 3 days." (or "more than a month").
const OUTLOOK_BUCKETS = {
  day: "volunteer.outlook.bucket-day",
  "3days": "volunteer.outlook.bucket-3days",
  week: "volunteer.outlook.bucket-week",
  month: "volunteer.outlook.bucket-month",
  longer: "volunteer.outlook.bucket-longer",
};

function outlookText(outlook) {
  return t(OUTLOOK_BUCKETS[outlook.bucket] ?? OUTLOOK_BUCKETS.longer);
}

function outlookBasis(outlook) {
  return t("volunteer.outlook.basis", {
    calls: t("volunteer.outlook.count-calls-week", { count: outlook.calls_per_week }),
    hours: t("volunteer.outlook.count-hours", { count: outlook.window_hours_per_week }),
  });
}

// "2 of 40, tied with 30": their place in the order among volunteers in window.
function outlookPlace(row) {
  const place = t("volunteer.outlook.place-of", { place: row.place, total: row.in_window });
  return row.tied ? t("volunteer.outlook.place-tied", { place, count: row.tied }) : place;
}

function outlookCell(row, key) {
  if (key === "language") return languageName(row.language);
  if (key === "place") return outlookPlace(row);
  return formatNumber(row[key]);
}

function outlookTable(languages) {
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  const table = document.createElement("table");
  const caption = table.createCaption();
  caption.id = "outlook-caption";
  caption.textContent = t("volunteer.outlook.caption");
  const head = table.createTHead().insertRow();
  for (const [, title] of OUTLOOK_COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = t(title);
    head.append(th);
  }
  const body = table.createTBody();
  for (const row of languages) {
    const tr = body.insertRow();
    for (const [key] of OUTLOOK_COLUMNS) {
      if (key === "language") {
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = outlookCell(row, key);
        tr.append(th);
      } else {
        tr.insertCell().textContent = outlookCell(row, key);
      }
    }
  }
  wrap.append(table);
  return wrap;
}

// Local hours of day as times in the page's language ("8:00 PM", "20:00"), listed.
function outlookHours(hours) {
  const times = hours.map((hour) =>
    formatDateTime(new Date(2026, 0, 5, hour, 0), { hour: "numeric", minute: "2-digit" }),
  );
  return new Intl.ListFormat(currentLanguage(), { type: "conjunction" }).format(times);
}

function outlookSuggestion(suggestion) {
  const params = {
    language: languageName(suggestion.language),
    requests: t("volunteer.outlook.count-requests", { count: suggestion.requests_30d }),
    volunteers: t("volunteer.outlook.count-volunteers", { count: suggestion.volunteers }),
  };
  if (suggestion.kind === "language") return t("volunteer.outlook.add-language", params);
  return t("volunteer.outlook.widen-hours", { ...params, hours: outlookHours(suggestion.hours) });
}

function outlookHelp(suggestions) {
  const box = document.createElement("div");
  const heading = document.createElement("h3");
  heading.id = "h-outlook-help";
  heading.textContent = t("volunteer.outlook.help-heading");
  const list = document.createElement("ul");
  for (const suggestion of suggestions) {
    const item = document.createElement("li");
    item.textContent = outlookSuggestion(suggestion);
    list.append(item);
  }
  box.append(heading, list);
  return box;
}

async function outlook() {
  const summary = $("#outlook-summary");
  const basis = $("#outlook-basis");
  const table = $("#outlook-languages");
  const help = $("#outlook-help");
  const response = await page.session.api("/v1/me/outlook").catch(() => null);
  if (!response || !response.ok) {
    summary.textContent = t("volunteer.outlook.failed");
    for (const box of [basis, table, help]) box.replaceChildren();
    return;
  }
  const report = await response.json();
  summary.textContent = outlookText(report);
  basis.textContent = outlookBasis(report);
  table.replaceChildren(outlookTable(report.languages));
  markScrollable(table);
  if (report.suggestions.length) help.replaceChildren(outlookHelp(report.suggestions));
  else help.replaceChildren();
}

// An invitation link carries the code in the fragment (#circle=CODE); read before sign-in
// wipes the fragment.
const invitedWith = new URLSearchParams(location.hash.replace(/^#/, "")).get("circle");

function circleItem(text, buttons) {
  const item = document.createElement("li");
  item.append(`${text} `);
  const group = document.createElement("span");
  for (const [label, action] of buttons) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.addEventListener("click", action);
    group.append(button);
  }
  item.append(group);
  return item;
}

function mutedText(box, key) {
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = t(key);
  box.replaceChildren(p);
}

async function circles() {
  const requests = $("#circle-requests");
  const box = $("#circle-list");
  const response = await page.session.api("/v1/me/circle").catch(() => null);
  if (!response || !response.ok) {
    const p = document.createElement("p");
    p.textContent = t("volunteer.circles.failed");
    box.replaceChildren(p);
    return;
  }
  const { circles: mine, proposals } = await response.json();
  if (proposals.length) {
    const list = document.createElement("ul");
    list.className = "circle";
    list.setAttribute("aria-label", t("volunteer.circles.requests"));
    for (const p of proposals) {
      const name = p.display_name || t("volunteer.circles.someone-helped");
      const answer = (accept) => async () => {
        const path = `/v1/me/circle/proposals/${encodeURIComponent(p.proposal)}`;
        const reply = await page.session.api(path, { method: "POST", body: { accept } }).catch(() => null);
        if (!reply || !reply.ok) announce(t("volunteer.circles.answer-failed"));
        else announce(t(accept ? "volunteer.circles.joined" : "volunteer.circles.declined", { name }));
        await circles();
        $("#circle-code").focus();
      };
      list.append(
        circleItem(t("volunteer.circles.asks", { name }), [
          [t("volunteer.circles.accept", { name }), answer(true)],
          [t("volunteer.circles.decline", { name }), answer(false)],
        ]),
      );
    }
    requests.replaceChildren(list);
  } else {
    requests.replaceChildren();
  }
  if (!mine.length) {
    mutedText(box, "volunteer.circles.none");
    return;
  }
  const list = document.createElement("ul");
  list.className = "circle";
  list.setAttribute("aria-label", t("volunteer.circles.yours"));
  for (const c of mine) {
    const name = c.display_name || t("volunteer.circles.someone");
    list.append(
      circleItem(t("volunteer.circles.named", { name }), [
        [
          t("volunteer.circles.leave", { name }),
          async () => {
            const path = `/v1/me/circle/circles/${encodeURIComponent(c.circle)}`;
            const reply = await page.session.api(path, { method: "DELETE" }).catch(() => null);
            announce(reply && reply.ok ? t("volunteer.circles.left", { name }) : t("volunteer.circles.leave-failed"));
            await circles();
            $("#circle-code").focus();
          },
        ],
      ]),
    );
  }
  box.replaceChildren(list);
}

async function joinCircle(event) {
  event.preventDefault();
  const code = $("#circle-code").value.trim();
  if (!code) {
    announce(t("volunteer.circles.type-code"));
    $("#circle-code").focus();
    return;
  }
  const response = await page.session.api("/v1/circle/join", { method: "POST", body: { code } }).catch(() => null);
  const body = response ? await response.json().catch(() => null) : null;
  if (!response || !response.ok || !body) {
    announce(body && body.message ? body.message : t("volunteer.circles.join-failed"));
    $("#circle-code").focus();
    return;
  }
  $("#circle-code").value = "";
  announce(
    body.display_name ? t("volunteer.circles.joined", { name: body.display_name }) : t("volunteer.circles.joined-theirs"),
  );
  await circles();
}

async function main() {
  await startLanguage();
  page.session = await startSession("volunteer", (session) => {
    session
      .on("call.ring", onRing)
      .on("call.withdrawn", onWithdrawn)
      .on("call.assigned", onAssigned)
      .on("signal", call.onSignal)
      .on("signal.ack", call.onSignal)
      .on("call.ended", onEnded)
      .on("availability", onAvailabilityFromBroker);
    lobby.register(session);
  });
  $("#duty").addEventListener("click", () => setDuty(!page.onDuty));
  $("#accept").addEventListener("click", accept);
  $("#decline").addEventListener("click", decline);
  $("#hang-up").addEventListener("click", call.hangUp);
  $("#refresh-history").addEventListener("click", async () => {
    await history();
    announce(t("volunteer.history.refreshed"));
  });
  $("#export-csv").addEventListener("click", exportCsv);
  $("#impact-csv").addEventListener("click", exportImpact);
  $("#circle-join").addEventListener("submit", joinCircle);
  if (invitedWith) $("#circle-code").value = invitedWith;
  $("#notify-allow").addEventListener("click", notificationsAllowed);
  $("#notify-enable").addEventListener("click", notificationsAllowed);
  $("#notify-later").addEventListener("click", () => {
    $("#notify-ask").hidden = true;
    announce(t("volunteer.notify.later-said", { waiting: waitingText() }));
    $("#duty").focus();
  });
  const sound = $("#ring-sound");
  sound.addEventListener("click", () => {
    unlockAudio();
    page.ringSound.enabled = !page.ringSound.enabled;
    setSwitch(sound, page.ringSound.enabled);
    announce(t(page.ringSound.enabled ? "common.alerts.sound-on" : "common.alerts.sound-off"));
  });
  addEventListener("resize", () => {
    markScrollable($("#history"));
    markScrollable($("#impact-months"));
    markScrollable($("#outlook-languages"));
  });
  showState("idle", { focus: false });
  // Still on duty from before a reload or a dropped connection? The broker knows.
  const profile = await loadProfile(page.session);
  page.onDuty = Boolean(profile && profile.available === true);
  setSwitch($("#duty"), page.onDuty);
  lobby.dutyChanged();
  setSwitch(sound, page.ringSound.enabled);
  showNotifyStatus();
  $("#duty").focus();
  const welcome = page.session.welcome;
  const invited = invitedWith ? ` ${t("volunteer.circles.invited")}` : "";
  announce(
    t("volunteer.signed-in", {
      name: welcome.user.display_name,
      waiting: waitingText(),
      restriction: restrictionNotice(welcome),
    }) + invited,
  );
  history();
  impact();
  outlook();
  circles();
  if (page.onDuty) enablePush();
}

main();
