// The recipient's page: ask for help, hear the search progress, show the camera, hang up,
// give feedback. Usable with a screen reader alone: every change is said in the live region
// and focus moves to the one thing to do next.

import { RecipientTools, cameraDevice, openToolsChannel, photosAllowed, setPhotosAllowed } from "./calltools.js";
import { MediaCall, ProtocolError, stopStream } from "./protocol.js";
import {
  $,
  LANGUAGES,
  announce,
  languageName,
  minutes,
  progressText,
  restrictionNotice,
  showState,
  startSession,
} from "./ui.js";

const page = { session: null, callId: null, media: null, stream: null, peer: "", assigned: false };
window.vabrokerPage = page; // for diagnostics and the browser tests

const ENDED = {
  completed: (by) => (by === "recipient" ? "You hung up." : "The helper ended the call."),
  cancelled: () => "The call was cancelled.",
  no_answer: () => "No one could answer this time. Please try again in a few minutes.",
  peer_lost: () => "The connection to the helper was lost.",
  closed: () => "The organisation closed before anyone could answer.",
  failed: () => "The call failed.",
};

async function camera() {
  // The rear camera on a phone shows what the recipient points at; elsewhere any camera.
  return navigator.mediaDevices.getUserMedia({
    video: { facingMode: { ideal: "environment" } },
    audio: true,
  });
}

async function request(extra) {
  const language = $("#language").value;
  const topic = $("#topic").value.trim();
  const message = { type: "call.request", language, ...extra };
  if (topic) message.topic = topic;
  if (!extra.org && $("#ask-assistant").checked) message.helper = "assistant";
  const who = document.querySelector('input[name="who"]:checked');
  if (!extra.org && who && who.value !== "everyone") message.circle = who.value;
  announce("Starting your camera…");
  try {
    page.stream = await camera();
  } catch (err) {
    announce(`Your camera could not be started (${err.name}). Check the browser's permission and try again.`);
    return;
  }
  $("#preview").srcObject = page.stream;
  try {
    const status = await page.session.request(message);
    page.callId = status.call;
    page.assigned = false;
    showState("searching");
    $("#search-detail").textContent = `Language: ${languageName(language)}.`;
    announce(progressText(status));
  } catch (err) {
    stopStream(page.stream);
    page.stream = null;
    announce(err instanceof ProtocolError ? err.message : String(err));
  }
}

function onStatus(status) {
  // After a reload the broker re-sends the open search: take it up so that it can be cancelled.
  if (!page.callId && !status.ref && ["searching", "queued"].includes(status.state)) {
    page.callId = status.call;
    page.assigned = false;
    showState("searching");
  }
  if (status.call !== page.callId || document.body.dataset.state !== "searching") return;
  page.progress = progressText(status);
  announce(page.progress);
}

async function onAssigned(assigned) {
  if (assigned.call !== page.callId || page.media) return;
  page.assigned = true;
  page.peer = assigned.peer.display_name || "your helper";
  showState("in-call");
  $("#call-detail").textContent = `You are talking with ${page.peer}.`;
  announce(`${page.peer} answered. Connecting…`);
  page.media = new MediaCall(page.session, assigned, {
    localStream: page.stream,
    onRemoteTrack: (track, stream) => {
      if (track.kind === "audio") $("#remote-audio").srcObject = stream || new MediaStream([track]);
    },
    onMediaState: (state) => {
      if (state === "connected") announce(`Connected to ${page.peer}. They can see your camera now.`);
      else if (state === "failed") announce("The video connection failed. You can hang up and call again.");
    },
  });
  // The helper's tools act on this camera; what they do is said in the live region.
  page.tools = new RecipientTools(
    openToolsChannel(page.media.pc),
    cameraDevice({
      stream: () => page.stream,
      sender: () => page.media && page.media.pc.getSenders().find((s) => s.track && s.track.kind === "video"),
    }),
    { onNotice: announce },
  );
  await page.media.start();
}

function onSignal(message) {
  if (page.media && message.call === page.callId) {
    page.media.handleSignal(message.data).catch((err) => console.warn(err));
  }
}

function finish(reasonText) {
  if (page.media) page.media.close();
  page.media = null;
  page.tools = null;
  stopStream(page.stream);
  page.stream = null;
  $("#preview").srcObject = null;
  $("#remote-audio").srcObject = null;
  $("#feedback").hidden = !page.assigned;
  $("#ended-detail").textContent = reasonText;
  showState("ended");
  announce(`Call ended. ${reasonText}`);
}

function onEnded(message) {
  if (message.call !== page.callId) return;
  let text = (ENDED[message.reason] || (() => "The call ended."))(message.by);
  if (message.reason === "no_answer" && message.retry_after_s) {
    text = `No one could answer this time. Please try again in ${minutes(message.retry_after_s)}.`;
  }
  finish(text);
}

async function hangUp(kind) {
  try {
    await page.session.request({ type: kind, call: page.callId });
  } catch (err) {
    // Already over (the other side ended it first): the call.ended event finishes the page.
    if (err.code !== "conflict") announce(err.message);
  }
}

async function sendFeedback(event) {
  event.preventDefault();
  const rating = document.querySelector('input[name="rating"]:checked').value;
  const report = $("#report").value;
  const comment = $("#comment").value.trim();
  const message = { type: "call.feedback", call: page.callId, rating };
  if (report) message.report = report;
  if (comment) message.comment = comment;
  try {
    await page.session.request(message);
    $("#feedback").hidden = true;
    announce(report ? "Thank you. Your feedback and report were sent." : "Thank you. Your feedback was sent.");
    $("#again").focus();
  } catch (err) {
    announce(err.message);
  }
}

async function partners() {
  const box = $("#partners");
  let response;
  try {
    response = await page.session.api("/v1/orgs");
  } catch {
    box.innerHTML = "<p>The partner directory could not be loaded.</p>";
    return;
  }
  if (response.status === 404) {
    box.innerHTML = "<p>This service does not offer help from partner organisations.</p>";
    return;
  }
  const body = response.ok ? await response.json().catch(() => null) : null;
  const orgs = body && Array.isArray(body.orgs) ? body.orgs : Array.isArray(body) ? body : null;
  if (!orgs) {
    box.innerHTML = "<p>The partner directory could not be loaded.</p>";
    return;
  }
  if (orgs.length === 0) {
    box.innerHTML = "<p>No partner organisations are listed yet.</p>";
    return;
  }
  const list = document.createElement("ul");
  list.className = "orgs";
  for (const org of orgs) {
    const item = document.createElement("li");
    const name = document.createElement("h3");
    name.textContent = org.name || org.id;
    item.append(name);
    if (org.description) {
      const p = document.createElement("p");
      p.textContent = org.description;
      item.append(p);
    }
    const hours = document.createElement("p");
    const next = org.next_opening ? new Date(org.next_opening) : null;
    hours.textContent = org.open_now
      ? "Open now."
      : next && !Number.isNaN(next.getTime())
        ? `Closed. Opens ${next.toLocaleString([], { weekday: "long", hour: "numeric", minute: "2-digit" })}.`
        : "Closed.";
    item.append(hours);
    if (org.open_now) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `Call ${org.name || org.id}`;
      button.addEventListener("click", () => request({ org: org.id }));
      item.append(button);
    }
    list.append(item);
  }
  box.replaceChildren(list);
}

async function circle() {
  const box = $("#circle-members");
  const response = await page.session.api("/v1/me/circle").catch(() => null);
  if (!response || !response.ok) {
    box.innerHTML = "<p>Your circle could not be loaded.</p>";
    return;
  }
  const { members } = await response.json();
  if (!members.length) {
    box.innerHTML = '<p class="muted">Nobody is in your circle yet. Make an invitation code and give it to someone you trust.</p>';
    return;
  }
  const list = document.createElement("ul");
  list.className = "circle";
  for (const member of members) {
    const item = document.createElement("li");
    const name = member.display_name || "A helper";
    item.append(`${name} `);
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `Remove ${name}`;
    button.addEventListener("click", async () => {
      const path = `/v1/me/circle/members/${encodeURIComponent(member.member)}`;
      const answer = await page.session.api(path, { method: "DELETE" }).catch(() => null);
      announce(answer && answer.ok ? `${name} is no longer in your circle.` : `${name} could not be removed.`);
      await circle();
      $("#circle-invite").focus();
    });
    item.append(button);
    list.append(item);
  }
  box.replaceChildren(list);
}

async function invite() {
  const response = await page.session.api("/v1/me/circle/invitations", { method: "POST" }).catch(() => null);
  const body = response ? await response.json().catch(() => null) : null;
  if (!response || !response.ok || !body) {
    announce(body && body.message ? body.message : "No invitation code could be made.");
    return;
  }
  const until = new Date(body.expires_at).toLocaleDateString(undefined, { dateStyle: "long" });
  const text = `Your invitation code is ${body.code}. Give it to one person you trust: it works once, until ${until}.`;
  $("#circle-code").textContent = text;
  announce(text);
}

async function languages() {
  const select = $("#language");
  let mine = [];
  const response = await page.session.api("/v1/me/profile").catch(() => null);
  if (response && response.ok) mine = (await response.json()).languages || [];
  const tags = [...mine, ...Object.keys(LANGUAGES).filter((t) => !mine.includes(t))];
  select.replaceChildren(
    ...tags.map((tag) => new Option(languageName(tag), tag, tag === tags[0], tag === tags[0])),
  );
}

async function main() {
  page.session = await startSession("recipient", (session) => {
    session
      .on("call.status", onStatus)
      .on("call.assigned", onAssigned)
      .on("signal", onSignal)
      .on("call.ended", onEnded);
  });
  await languages();
  $("#call").addEventListener("click", () => request({}));
  $("#circle-invite").addEventListener("click", invite);
  circle();
  $("#cancel").addEventListener("click", () => hangUp("call.cancel"));
  $("#hang-up").addEventListener("click", () => hangUp("call.end"));
  $("#feedback").addEventListener("submit", sendFeedback);
  $("#allow-photos").checked = photosAllowed();
  $("#allow-photos").addEventListener("change", (event) => setPhotosAllowed(event.target.checked));
  $("#again").addEventListener("click", () => {
    showState("idle");
    announce("Ready. Press Call a volunteer when you need help.");
  });
  const name = page.session.welcome.user.display_name;
  if (page.callId) {
    // A search taken up after a reload (see onStatus).
    showState("searching");
    announce(`Signed in as ${name}. ${page.progress}`);
  } else {
    showState("idle", { focus: false });
    $("#call").focus();
    announce(`Signed in as ${name}. Ready to call a volunteer.${restrictionNotice(page.session.welcome)}`);
  }
  partners();
}

main();
