// The agent console: available or away, the organisation's live queue, take the next call,
// the call itself, and wrap-up before the next one.

import { helperCall } from "./helper.js";
import { $, announce, languageName, minutes, restrictionNotice, showState, startSession, SUSPENDED_NOTICE } from "./ui.js";

const page = { session: null, ring: null, callId: null, media: null, mic: null, status: "away", queue: null };
const call = helperCall(page);
window.vabrokerPage = page; // for diagnostics and the browser tests

const ENDED = {
  completed: (by) => (by === "agent" ? "You hung up." : "The caller ended the call."),
  cancelled: () => "The caller cancelled.",
  peer_lost: () => "The connection to the caller was lost.",
  failed: () => "The call failed.",
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
    announce(page.status === "available" ? "You are available. Calls from the queue will come to you." : "You are away. No calls will come to you.");
  }
}

function renderQueue(feed) {
  page.queue = feed;
  const box = $("#queue");
  const waiting = Array.isArray(feed.waiting) ? feed.waiting : Array.isArray(feed.calls) ? feed.calls : [];
  const parts = [];
  const summary = document.createElement("p");
  summary.textContent = waiting.length === 0 ? "Nobody is waiting." : `${waiting.length} waiting.`;
  parts.push(summary);
  if (waiting.length) {
    const table = document.createElement("table");
    table.createCaption().textContent = "Waiting calls";
    const head = table.createTHead().insertRow();
    for (const title of ["Position", "Waiting", "Language", "Topic"]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = title;
      head.append(th);
    }
    const body = table.createTBody();
    waiting.forEach((call, i) => {
      const row = body.insertRow();
      row.insertCell().textContent = call.position ?? i + 1;
      const wait = call.wait_s ?? call.waiting_s;
      row.insertCell().textContent = typeof wait === "number" ? minutes(wait).replace("about ", "") : "";
      row.insertCell().textContent = call.language ? languageName(call.language) : "";
      row.insertCell().textContent = call.topic || "";
    });
    parts.push(table);
  }
  if (Array.isArray(feed.agents) && feed.agents.length) {
    const list = document.createElement("ul");
    for (const agent of feed.agents) {
      const li = document.createElement("li");
      li.textContent = `${agent.display_name || agent.id || "Agent"}: ${agent.state || "unknown"}`;
      list.append(li);
    }
    const h = document.createElement("h3");
    h.textContent = "Agents";
    parts.push(h, list);
  }
  box.replaceChildren(...parts);
}

async function loadQueue() {
  const org = page.session.welcome.user.org;
  const response = await page.session.api(`/v1/orgs/${encodeURIComponent(org)}/queue`).catch(() => null);
  if (response && response.status === 404) {
    $("#queue").innerHTML = "<p>This broker does not run a queue for your organisation.</p>";
    return;
  }
  if (!response || !response.ok) {
    $("#queue").innerHTML = "<p>The queue could not be loaded.</p>";
    return;
  }
  renderQueue(await response.json());
}

function onRing(ring) {
  if (page.callId) return;
  page.ring = ring;
  $("#ring-from").textContent = ring.requester.display_name || "A caller";
  $("#ring-queue").textContent = ring.queue || ring.org || "";
  $("#ring-language").textContent = languageName(ring.language);
  $("#ring-topic").textContent = ring.topic || "Not given";
  $("#ring-note").textContent = ring.note || "None";
  showState("ringing");
  const topic = ring.topic ? ` about ${ring.topic}` : "";
  announce(`Next call: ${ring.requester.display_name || "a caller"}${topic}, in ${languageName(ring.language)}. Take it or pass.`);
}

function onWithdrawn(message) {
  if (!page.ring || message.call !== page.ring.call) return;
  page.ring = null;
  showState("idle");
  announce(message.reason === "answered" ? "Another agent took that call." : message.reason === "cancelled" ? "The caller left the queue." : "That call went to the next agent.");
}

function take() {
  return call.accept("Taking the call…", "Another agent took that call.");
}

async function pass() {
  const ring = page.ring;
  if (!ring) return;
  page.ring = null;
  await page.session.request({ type: "call.decline", call: ring.call }).catch(() => {});
  showState("idle");
  announce("Passed. The call goes to the next agent.");
}

function onEnded(message) {
  const text = call.endCall(message, ENDED);
  if (text === null) return;
  $("#wrap-notes").value = "";
  showState("ended");
  announce(`Call ended. ${text} Wrap up, then choose Ready for the next call.`);
}

async function ready() {
  await setStatus("available", { quiet: true });
  showState("idle");
  announce("You are available. Calls from the queue will come to you.");
}

// The broker may set an agent away on its own (e.g. after missed rings): say so.
function onStatusFromBroker(message) {
  if (message.ref || (message.state === page.status && message.reason !== "suspended")) return;
  page.status = message.state;
  for (const radio of document.querySelectorAll('input[name="status"]')) {
    radio.checked = radio.value === page.status;
  }
  if (message.reason === "suspended") announce(`You were set to away. ${SUSPENDED_NOTICE}`);
  else announce(message.state === "away" ? "You were set to away." : `Your status is now ${message.state}.`);
}

async function main() {
  page.session = await startSession("agent", (session) => {
    session
      .on("call.ring", onRing)
      .on("call.withdrawn", onWithdrawn)
      .on("call.assigned", call.onAssigned)
      .on("signal", call.onSignal)
      .on("call.ended", onEnded)
      .on("queue.update", renderQueue)
      .on("agent.status", onStatusFromBroker);
  });
  const welcome = page.session.welcome;
  $("#org-name").textContent = `— ${welcome.user.org}`;
  for (const radio of document.querySelectorAll('input[name="status"]')) {
    radio.addEventListener("change", () => radio.checked && setStatus(radio.value));
  }
  $("#take").addEventListener("click", take);
  $("#decline").addEventListener("click", pass);
  $("#hang-up").addEventListener("click", call.hangUp);
  $("#ready").addEventListener("click", ready);
  showState("idle", { focus: false });
  document.querySelector('input[name="status"]:checked').focus();
  announce(`Signed in as ${welcome.user.display_name} of ${welcome.user.org}. You are away.${restrictionNotice(welcome)}`);
  loadQueue();
}

main();
