// The agent console: available or away, the organisation's live queue, take the next call,
// the call itself, and wrap-up before the next one.

import { markScrollable } from "./charts.js";
import { helperCall } from "./helper.js";
import { formatNumber } from "./i18n.js";
import { RING, Tone, unlockAudio } from "./sound.js";
import {
  $,
  announce,
  languageName,
  loadProfile,
  minutes,
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
  status: "away",
  queue: null,
  // The same ring sound and switch as the volunteer's page, its choice kept separately.
  ringSound: new Tone(RING, { storageKey: "vabroker.agent-ring-sound", gain: 0.15 }),
};
const call = helperCall(page);
window.vabrokerPage = page; // for diagnostics and the browser tests

const AGENT_STATES = {
  available: "agent.state.available",
  away: "agent.state.away",
  busy: "agent.state.busy",
  ringing: "agent.state.ringing",
  wrap_up: "agent.state.wrap-up",
};

function paragraph(text) {
  const p = document.createElement("p");
  p.textContent = text;
  return p;
}

const ENDED = {
  completed: (by) => t(by === "agent" ? "common.ended.you-hung-up" : "common.ended.caller-ended"),
  cancelled: () => t("agent.ended.cancelled"),
  peer_lost: () => t("common.ended.peer-lost"),
  failed: () => t("common.ended.failed"),
};

async function setStatus(state, { quiet = false } = {}) {
  try {
    const answer = await page.session.request({ type: "agent.status", state });
    page.status = answer.state;
  } catch (err) {
    announce(err.message);
    return;
  }
  for (const radio of document.querySelectorAll('input[name="status"]')) {
    radio.checked = radio.value === page.status;
  }
  if (!quiet) {
    announce(t(page.status === "available" ? "agent.status.now-available" : "agent.status.now-away"));
  }
}

function renderQueue(feed) {
  page.queue = feed;
  const box = $("#queue");
  const waiting = Array.isArray(feed.waiting) ? feed.waiting : Array.isArray(feed.calls) ? feed.calls : [];
  const parts = [];
  const summary = document.createElement("p");
  summary.textContent = waiting.length === 0 ? t("agent.queue.empty") : t("agent.queue.waiting", { count: waiting.length });
  parts.push(summary);
  if (waiting.length) {
    // Narrow screens: the table scrolls inside a region named by its caption (markScrollable).
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    const table = document.createElement("table");
    const caption = table.createCaption();
    caption.id = "queue-caption";
    caption.textContent = t("agent.queue.caption");
    wrap.append(table);
    const head = table.createTHead().insertRow();
    for (const title of ["agent.queue.position", "agent.queue.waited", "common.ring.language", "common.ring.topic"]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = t(title);
      head.append(th);
    }
    const body = table.createTBody();
    waiting.forEach((call, i) => {
      const row = body.insertRow();
      row.insertCell().textContent = formatNumber(call.position ?? i + 1);
      const wait = call.wait_s ?? call.waiting_s;
      row.insertCell().textContent = typeof wait === "number" ? minutes(wait) : "";
      row.insertCell().textContent = call.language ? languageName(call.language) : "";
      row.insertCell().textContent = call.topic || "";
    });
    parts.push(wrap);
  }
  if (Array.isArray(feed.agents) && feed.agents.length) {
    const list = document.createElement("ul");
    for (const agent of feed.agents) {
      const li = document.createElement("li");
      const state = AGENT_STATES[agent.state] ? t(AGENT_STATES[agent.state]) : agent.state || t("agent.state.unknown");
      li.textContent = t("agent.queue.agent", { name: agent.display_name || agent.id || t("common.role.agent"), state });
      list.append(li);
    }
    const h = document.createElement("h3");
    h.textContent = t("agent.queue.agents");
    parts.push(h, list);
  }
  box.replaceChildren(...parts);
  markScrollable(box);
}

async function loadQueue() {
  const org = page.session.welcome.user.org;
  const response = await page.session.api(`/v1/orgs/${encodeURIComponent(org)}/queue`).catch(() => null);
  if (response && response.status === 404) {
    $("#queue").replaceChildren(paragraph(t("agent.queue.none")));
    return;
  }
  if (!response || !response.ok) {
    $("#queue").replaceChildren(paragraph(t("agent.queue.failed")));
    return;
  }
  renderQueue(await response.json());
}

function onRing(ring) {
  if (page.callId) return;
  page.ring = ring;
  const from = ring.requester.display_name || t("common.ring.a-caller");
  $("#ring-from").textContent = from;
  $("#ring-queue").textContent = ring.queue || ring.org || "";
  $("#ring-language").textContent = languageName(ring.language);
  $("#ring-topic").textContent = ring.topic || t("common.ring.no-topic");
  $("#ring-note").textContent = ring.note || t("common.ring.no-note");
  showState("ringing");
  page.ringSound.start();
  const language = languageName(ring.language);
  announce(
    ring.topic
      ? t("agent.ring.said-topic", { name: from, topic: ring.topic, language })
      : t("agent.ring.said", { name: from, language }),
  );
}

function onWithdrawn(message) {
  if (!page.ring || message.call !== page.ring.call) return;
  page.ring = null;
  page.ringSound.stop();
  showState("idle");
  announce(
    t(
      message.reason === "answered"
        ? "agent.withdrawn.answered"
        : message.reason === "cancelled"
          ? "agent.withdrawn.cancelled"
          : "agent.withdrawn.other",
    ),
  );
}

function take() {
  page.ringSound.stop();
  return call.accept(t("agent.ring.taking"), t("agent.withdrawn.answered"));
}

async function pass() {
  const ring = page.ring;
  if (!ring) return;
  page.ring = null;
  page.ringSound.stop();
  await page.session.request({ type: "call.decline", call: ring.call }).catch(() => {});
  showState("idle");
  announce(t("agent.ring.passed"));
}

function onEnded(message) {
  const text = call.endCall(message, ENDED);
  if (text === null) return;
  $("#wrap-notes").value = "";
  showState("ended");
  announce(t("agent.ended.said", { reason: text }));
}

async function ready() {
  await setStatus("available", { quiet: true });
  showState("idle");
  announce(t("agent.status.now-available"));
}

// The broker may set an agent away on its own (e.g. after missed rings): say so.
function onStatusFromBroker(message) {
  if (message.ref || (message.state === page.status && message.reason !== "suspended")) return;
  page.status = message.state;
  for (const radio of document.querySelectorAll('input[name="status"]')) {
    radio.checked = radio.value === page.status;
  }
  if (message.reason === "suspended") announce(t("agent.status.suspended", { why: suspendedNotice() }));
  else if (message.state === "away") announce(t("agent.status.set-away"));
  else announce(t("agent.status.now", { state: AGENT_STATES[message.state] ? t(AGENT_STATES[message.state]) : message.state }));
}

async function main() {
  await startLanguage();
  page.session = await startSession("agent", (session) => {
    session
      .on("call.ring", onRing)
      .on("call.withdrawn", onWithdrawn)
      .on("call.assigned", call.onAssigned)
      .on("signal", call.onSignal)
      .on("signal.ack", call.onSignal)
      .on("call.ended", onEnded)
      .on("queue.update", renderQueue)
      .on("agent.status", onStatusFromBroker);
  });
  const welcome = page.session.welcome;
  await loadProfile(page.session);
  $("#org-name").textContent = `— ${welcome.user.org}`;
  for (const radio of document.querySelectorAll('input[name="status"]')) {
    // Choosing a status is the click that lets the page ring aloud later.
    radio.addEventListener("change", () => {
      if (!radio.checked) return;
      unlockAudio();
      setStatus(radio.value);
    });
  }
  const sound = $("#ring-sound");
  setSwitch(sound, page.ringSound.enabled);
  sound.addEventListener("click", () => {
    unlockAudio();
    page.ringSound.enabled = !page.ringSound.enabled;
    setSwitch(sound, page.ringSound.enabled);
    announce(t(page.ringSound.enabled ? "common.alerts.sound-on" : "common.alerts.sound-off"));
  });
  $("#take").addEventListener("click", take);
  $("#decline").addEventListener("click", pass);
  $("#hang-up").addEventListener("click", call.hangUp);
  $("#ready").addEventListener("click", ready);
  showState("idle", { focus: false });
  document.querySelector('input[name="status"]:checked').focus();
  announce(
    t("agent.signed-in", { name: welcome.user.display_name, org: welcome.user.org, restriction: restrictionNotice(welcome) }),
  );
  addEventListener("resize", () => markScrollable($("#queue")));
  loadQueue();
}

main();
