// The volunteer's page: go on duty, hear and see a ring, accept or decline, see the caller's
// camera and talk back, and look at past calls.

import { helperCall } from "./helper.js";
import { $, announce, languageName, restrictionNotice, showState, startSession, SUSPENDED_NOTICE } from "./ui.js";

const page = { session: null, ring: null, callId: null, media: null, mic: null, onDuty: false };
const call = helperCall(page);
window.vabrokerPage = page; // for diagnostics and the browser tests

const WITHDRAWN = {
  answered: "Someone else answered that call. Thank you for being there.",
  cancelled: "The caller cancelled.",
  expired: "The ring ended without an answer.",
  declined: "You declined that call on another device.",
};

const ENDED = {
  completed: (by) => (by === "volunteer" || by === "agent" ? "You hung up." : "The caller ended the call."),
  cancelled: () => "The call was cancelled.",
  peer_lost: () => "The connection to the caller was lost.",
  failed: () => "The call failed.",
};

function waitingText() {
  return page.onDuty ? "You are on duty. Waiting for a call." : "You are off duty.";
}

async function setDuty(onDuty) {
  try {
    const answer = await page.session.request({ type: "availability", available: onDuty });
    page.onDuty = answer.available;
  } catch (err) {
    announce(err.message);
    return;
  }
  const button = $("#duty");
  button.setAttribute("aria-checked", String(page.onDuty));
  announce(waitingText());
}

// The broker took the volunteer off duty (a suspension): the switch follows, and they hear why.
function onAvailabilityFromBroker(message) {
  if (message.ref || message.available === page.onDuty) return;
  page.onDuty = message.available;
  $("#duty").setAttribute("aria-checked", String(page.onDuty));
  announce(message.reason === "suspended" ? `You were taken off duty. ${SUSPENDED_NOTICE}` : waitingText());
}

function onRing(ring) {
  if (page.callId) return; // busy: the broker does not ring someone in a call
  page.ring = ring;
  $("#ring-from").textContent = ring.requester.display_name || "A caller";
  $("#ring-language").textContent = languageName(ring.language);
  $("#ring-topic").textContent = ring.topic || "Not given";
  $("#ring-note").textContent = ring.note || "None";
  // Said once, not counted down aloud: a ticking live region would drown the screen reader.
  const until = new Date(Date.now() + ring.expires_in_s * 1000);
  $("#ring-expires").textContent = `This ring lasts until ${until.toLocaleTimeString([], { hour: "numeric", minute: "2-digit", second: "2-digit" })}.`;
  showState("ringing");
  const topic = ring.topic ? ` about ${ring.topic}` : "";
  const circle = ring.circle === true ? " You are in their circle." : "";
  announce(`Call from ${ring.requester.display_name || "a caller"}${topic}, in ${languageName(ring.language)}.${circle} Accept or decline.`);
}

function onWithdrawn(message) {
  if (!page.ring || message.call !== page.ring.call) return;
  page.ring = null;
  showState("idle");
  announce(WITHDRAWN[message.reason] || "The ring ended.");
}

function accept() {
  return call.accept("Accepting…", WITHDRAWN.answered);
}

async function decline() {
  const ring = page.ring;
  if (!ring) return;
  page.ring = null;
  await page.session.request({ type: "call.decline", call: ring.call }).catch(() => {});
  showState("idle");
  announce(`Declined. ${waitingText()}`);
}

function onEnded(message) {
  const text = call.endCall(message, ENDED);
  if (text === null) return;
  showState("ended");
  announce(`Call ended. ${text} ${waitingText()}`);
  history();
  impact();
}

const COLUMNS = [
  ["requested", "Requested"],
  ["language", "Language"],
  ["topic", "Topic"],
  ["duration_s", "Length (s)"],
  ["reason", "Outcome"],
];

async function history() {
  const box = $("#history");
  const response = await page.session.api("/v1/me/calls").catch(() => null);
  if (!response || !response.ok) {
    box.innerHTML = "<p>Your calls could not be loaded.</p>";
    return;
  }
  const { calls } = await response.json();
  if (!calls.length) {
    box.innerHTML = '<p class="muted">No calls yet.</p>';
    return;
  }
  const table = document.createElement("table");
  table.createCaption().textContent = `${calls.length} call${calls.length === 1 ? "" : "s"}`;
  const head = table.createTHead().insertRow();
  for (const [, title] of COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = title;
    head.append(th);
  }
  const body = table.createTBody();
  for (const call of calls) {
    const row = body.insertRow();
    for (const [key] of COLUMNS) {
      let value = call[key];
      if (key === "requested" && value) value = new Date(value).toLocaleString();
      if (key === "language" && value) value = languageName(value);
      row.insertCell().textContent = value ?? "";
    }
  }
  box.replaceChildren(table);
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
  if (await download("/v1/me/calls?format=csv", "calls.csv")) announce("Your calls were downloaded as calls.csv.");
  else announce("Your calls could not be exported.");
}

const IMPACT_COLUMNS = [
  ["month", "Month"],
  ["calls", "Calls answered"],
  ["minutes", "Minutes"],
  ["people", "People helped"],
];

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

// "You have answered 3 calls: 12.5 minutes of help for 2 people, in English and Portuguese,
// since 3 May 2026."
function impactText(impact) {
  if (!impact.calls_answered) {
    return "You have not answered a call yet. Every call you answer will be counted here.";
  }
  const languages = impact.languages.map(languageName);
  const spoken = languages.length > 1 ? `${languages.slice(0, -1).join(", ")} and ${languages.at(-1)}` : languages[0];
  const since = new Date(impact.first_call).toLocaleDateString(undefined, { dateStyle: "long" });
  return (
    `You have answered ${plural(impact.calls_answered, "call", "calls")}: ` +
    `${plural(impact.minutes_helped, "minute", "minutes")} of help for ` +
    `${plural(impact.people_helped, "person", "people")}, in ${spoken}, since ${since}.`
  );
}

async function impact() {
  const summary = $("#impact-summary");
  const box = $("#impact-months");
  const response = await page.session.api("/v1/me/impact").catch(() => null);
  if (!response || !response.ok) {
    summary.textContent = "Your record could not be loaded.";
    box.replaceChildren();
    return;
  }
  const record = await response.json();
  summary.textContent = impactText(record);
  if (!record.by_month.length) {
    box.replaceChildren();
    return;
  }
  const table = document.createElement("table");
  table.createCaption().textContent = "Your calls by month";
  const head = table.createTHead().insertRow();
  for (const [, title] of IMPACT_COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = title;
    head.append(th);
  }
  const body = table.createTBody();
  for (const month of record.by_month) {
    const row = body.insertRow();
    for (const [key] of IMPACT_COLUMNS) row.insertCell().textContent = String(month[key]);
  }
  box.replaceChildren(table);
}

async function exportImpact() {
  if (await download("/v1/me/impact?format=csv", "impact.csv")) announce("Your record was downloaded as impact.csv.");
  else announce("Your record could not be exported.");
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

async function circles() {
  const requests = $("#circle-requests");
  const box = $("#circle-list");
  const response = await page.session.api("/v1/me/circle").catch(() => null);
  if (!response || !response.ok) {
    box.innerHTML = "<p>Your circles could not be loaded.</p>";
    return;
  }
  const { circles: mine, proposals } = await response.json();
  if (proposals.length) {
    const list = document.createElement("ul");
    list.className = "circle";
    list.setAttribute("aria-label", "Requests to join a circle");
    for (const p of proposals) {
      const name = p.display_name || "Someone you helped";
      const answer = (accept) => async () => {
        const path = `/v1/me/circle/proposals/${encodeURIComponent(p.proposal)}`;
        const reply = await page.session.api(path, { method: "POST", body: { accept } }).catch(() => null);
        if (!reply || !reply.ok) announce("That request could not be answered. It may have expired.");
        else announce(accept ? `You joined ${name}'s circle.` : `You declined ${name}'s request.`);
        await circles();
        $("#circle-code").focus();
      };
      list.append(
        circleItem(`${name}, whom you helped, asks you to join their circle.`, [
          [`Join ${name}'s circle`, answer(true)],
          [`Decline ${name}'s request`, answer(false)],
        ]),
      );
    }
    requests.replaceChildren(list);
  } else {
    requests.replaceChildren();
  }
  if (!mine.length) {
    box.innerHTML = '<p class="muted">You are not in anyone\'s circle yet.</p>';
    return;
  }
  const list = document.createElement("ul");
  list.className = "circle";
  list.setAttribute("aria-label", "Your circles");
  for (const c of mine) {
    const name = c.display_name || "Someone";
    list.append(
      circleItem(`${name}'s circle`, [
        [
          `Leave ${name}'s circle`,
          async () => {
            const path = `/v1/me/circle/circles/${encodeURIComponent(c.circle)}`;
            const reply = await page.session.api(path, { method: "DELETE" }).catch(() => null);
            announce(reply && reply.ok ? `You left ${name}'s circle.` : "You could not leave that circle.");
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
    announce("Type the invitation code you were given.");
    $("#circle-code").focus();
    return;
  }
  const response = await page.session.api("/v1/circle/join", { method: "POST", body: { code } }).catch(() => null);
  const body = response ? await response.json().catch(() => null) : null;
  if (!response || !response.ok || !body) {
    announce(body && body.message ? body.message : "You could not join that circle.");
    $("#circle-code").focus();
    return;
  }
  $("#circle-code").value = "";
  announce(`You joined ${body.display_name || "their"}'s circle.`);
  await circles();
}

async function main() {
  page.session = await startSession("volunteer", (session) => {
    session
      .on("call.ring", onRing)
      .on("call.withdrawn", onWithdrawn)
      .on("call.assigned", call.onAssigned)
      .on("signal", call.onSignal)
      .on("call.ended", onEnded)
      .on("availability", onAvailabilityFromBroker);
  });
  $("#duty").addEventListener("click", () => setDuty(!page.onDuty));
  $("#accept").addEventListener("click", accept);
  $("#decline").addEventListener("click", decline);
  $("#hang-up").addEventListener("click", call.hangUp);
  $("#refresh-history").addEventListener("click", async () => {
    await history();
    announce("Your calls are up to date.");
  });
  $("#export-csv").addEventListener("click", exportCsv);
  $("#impact-csv").addEventListener("click", exportImpact);
  $("#circle-join").addEventListener("submit", joinCircle);
  if (invitedWith) $("#circle-code").value = invitedWith;
  showState("idle", { focus: false });
  // Still on duty from before a reload or a dropped connection? The broker knows.
  const response = await page.session.api("/v1/me/profile").catch(() => null);
  if (response && response.ok) page.onDuty = (await response.json()).available === true;
  $("#duty").setAttribute("aria-checked", String(page.onDuty));
  $("#duty").focus();
  const welcome = page.session.welcome;
  const invited = invitedWith ? " You were invited into a circle: press Join the circle to accept." : "";
  announce(`Signed in as ${welcome.user.display_name}. ${waitingText()}${restrictionNotice(welcome)}${invited}`);
  history();
  impact();
  circles();
}

main();
