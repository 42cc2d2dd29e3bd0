// The recipient's page: ask for help, hear the search progress, show the camera, hang up,
// give feedback. Usable with a screen reader alone: every change is said in the live region
// and focus moves to the one thing to do next.

import { RecipientTools, cameraDevice, openToolsChannel, photosAllowed, setPhotosAllowed } from "./calltools.js";
import { duration, formatDateTime } from "./i18n.js";
import { MediaCall, ProtocolError, stopStream } from "./protocol.js";
import { RINGBACK, Tone, unlockAudio } from "./sound.js";
import {
  $,
  LANGUAGES,
  announce,
  languageName,
  loadProfile,
  minutes,
  progressText,
  restrictionNotice,
  searchNews,
  setSwitch,
  showState,
  startLanguage,
  startSession,
  t,
} from "./ui.js";

const page = {
  session: null,
  callId: null,
  media: null,
  stream: null,
  peer: "",
  assigned: false,
  status: null, // the last call.status of the open search
  withReader: false, // the call in progress is with the automatic reader
  handover: null, // the id of the volunteers' search asked for from the reader's call
  searchStarted: 0, // Date.now() when the search started (or was taken up after a reload)
  progressTimer: null,
  ringback: new Tone(RINGBACK, { storageKey: "vabroker.ringback" }),
};
window.vabrokerPage = page; // for diagnostics and the browser tests

const ENDED = {
  completed: (by) => t(by === "recipient" ? "recipient.ended.you-hung-up" : "recipient.ended.helper-ended"),
  cancelled: () => t("recipient.ended.cancelled"),
  no_answer: () => t("recipient.ended.no-answer"),
  peer_lost: () => t("recipient.ended.peer-lost"),
  closed: () => t("recipient.ended.closed"),
  failed: () => t("recipient.ended.failed"),
  handed_over: () => t("recipient.ended.handed-over"),
};

// What the reader read, as the page passes it on: the newest whole texts that fit the
// protocol's limit, without the characters it refuses (docs/protocol.md, call.handover).
export const MAX_READING = 3000;
const REFUSED_IN_TEXT = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

export function sharedReading(texts, limit = MAX_READING) {
  const kept = [];
  let size = 0;
  for (const raw of [...texts].reverse()) {
    const text = raw.replace(REFUSED_IN_TEXT, " ").trim();
    if (!text) continue;
    if (kept.length && size + text.length + 2 > limit) break;
    kept.push(text.slice(0, limit));
    size += text.length + 2;
  }
  return kept.reverse().join("\n\n").slice(0, limit);
}

// --- the search, said at a calm pace ----------------------------------------------------------
// Everything the broker tells about the search is said when it arrives. Between those, a
// progress sentence (how long, how many were asked) comes when nothing was said for
// PROGRESS_EARLY_S during the first PROGRESS_EARLY_UNTIL_S of the search, then for
// PROGRESS_LATE_S: often enough to show the search is alive, rare enough not to drown the
// screen reader (docs/pages.md).
export const PROGRESS_EARLY_S = 30;
export const PROGRESS_EARLY_UNTIL_S = 120;
export const PROGRESS_LATE_S = 60;

function searchSay(text) {
  announce(text);
  scheduleProgress();
}

function scheduleProgress() {
  clearTimeout(page.progressTimer);
  if (!page.callId || page.assigned) return;
  const elapsed = (Date.now() - page.searchStarted) / 1000;
  const pace = elapsed < PROGRESS_EARLY_UNTIL_S ? PROGRESS_EARLY_S : PROGRESS_LATE_S;
  page.progressTimer = setTimeout(() => searchSay(progressNow()), pace * 1000);
}

function stopSearch() {
  clearTimeout(page.progressTimer);
  page.progressTimer = null;
  page.ringback.stop();
}

function progressNow() {
  const status = page.status || { state: "searching", notified: 0 };
  // In steps of the early pace ("30 seconds", "1 minute, 30 seconds"): a timer that fires a
  // little late must not say "31 seconds".
  const steps = Math.floor((Date.now() - page.searchStarted) / 1000 / PROGRESS_EARLY_S);
  const elapsed = duration(steps * PROGRESS_EARLY_S);
  if (status.state === "queued") {
    return t("recipient.progress.queued", { elapsed, place: progressText(status) });
  }
  const asked = status.notified
    ? t("recipient.progress.asked", { count: status.notified })
    : t("recipient.progress.none-asked");
  return t("recipient.progress.searching", { elapsed, asked });
}

async function camera() {
  // The rear camera on a phone shows what the recipient points at; elsewhere any camera.
  return navigator.mediaDevices.getUserMedia({
    video: { facingMode: { ideal: "environment" } },
    audio: true,
  });
}

// Under prefers-reduced-motion the preview shows a still picture until the person plays it.
// Pausing the preview changes only this page's view: the helper still sees the camera.
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

function setPreviewPaused(paused) {
  const video = $("#preview");
  $("#preview-pause").setAttribute("aria-pressed", String(paused));
  if (paused) video.pause();
  else video.play().catch(() => {});
}

function showPreview(stream) {
  const video = $("#preview");
  video.srcObject = stream;
  if (reducedMotion.matches) {
    video.addEventListener("loadeddata", () => setPreviewPaused(true), { once: true });
  }
}

async function request(extra) {
  const language = $("#language").value;
  const topic = $("#topic").value.trim();
  const message = { type: "call.request", language, ...extra };
  if (topic) message.topic = topic;
  if (!extra.org && $("#ask-assistant").checked) message.helper = "assistant";
  const who = document.querySelector('input[name="who"]:checked');
  if (!extra.org && who && who.value !== "everyone") message.circle = who.value;
  unlockAudio(); // this click lets the page play the ringback
  announce(t("recipient.camera.starting"));
  try {
    page.stream = await camera();
  } catch (err) {
    announce(t("recipient.camera.failed", { error: err.name }));
    return;
  }
  showPreview(page.stream);
  try {
    const status = await page.session.request(message);
    page.callId = status.call;
    page.assigned = false;
    page.language = language;
    page.status = status;
    page.searchStarted = Date.now();
    showState("searching");
    $("#search-detail").textContent = t("recipient.searching.language", { language: languageName(language) });
    page.ringback.start();
    searchSay(progressText(status));
  } catch (err) {
    stopStream(page.stream);
    page.stream = null;
    announce(err instanceof ProtocolError ? err.message : String(err));
  }
}

function onStatus(status) {
  if (handoverStatus(status)) return;
  // After a reload the broker re-sends the open search: take it up so that it can be cancelled.
  if (!page.callId && !status.ref && ["searching", "queued"].includes(status.state)) {
    page.callId = status.call;
    page.assigned = false;
    page.searchStarted = Date.now();
    showState("searching");
  }
  if (status.call !== page.callId || document.body.dataset.state !== "searching") return;
  const before = page.status;
  page.status = status;
  page.progress = searchNews(status, before, page.language);
  searchSay(page.progress);
}

async function onAssigned(assigned) {
  if (page.handover && assigned.call === page.handover) handedOver(); // before its call.ended
  if (assigned.call !== page.callId || page.media) return;
  page.assigned = true;
  page.withReader = assigned.peer.assistant === true;
  const joining = page.joining;
  page.joining = false;
  showHandover();
  stopSearch();
  page.peer = assigned.peer.display_name || t("recipient.your-helper");
  showState("in-call");
  $("#call-detail").textContent = t("recipient.in-call.talking", { name: page.peer });
  announce(t(joining ? "recipient.handover.joined" : "recipient.in-call.answered", { name: page.peer }));
  page.media = new MediaCall(page.session, assigned, {
    localStream: page.stream,
    onRemoteTrack: (track, stream) => {
      if (track.kind === "audio") $("#remote-audio").srcObject = stream || new MediaStream([track]);
    },
    onMediaState: (state) => {
      if (state === "connected") announce(t("recipient.in-call.connected", { name: page.peer }));
      else if (state === "failed") announce(t("recipient.in-call.failed"));
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

// A relayed signal or signal.ack (numbered signals: docs/protocol.md).
function onSignal(message) {
  if (page.media && message.call === page.callId) page.media.onSignal(message);
}

function finish(reasonText) {
  stopSearch();
  if (page.media) page.media.close();
  page.media = null;
  page.tools = null;
  stopStream(page.stream);
  page.stream = null;
  page.status = null;
  page.handover = null;
  page.withReader = false;
  page.joining = false;
  showHandover();
  $("#preview").srcObject = null;
  $("#remote-audio").srcObject = null;
  $("#feedback").hidden = !page.assigned;
  $("#feedback").reset();
  $("#feedback-error").textContent = "";
  $("#ended-detail").textContent = reasonText;
  showState("ended");
  announce(t("recipient.ended.said", { reason: reasonText }));
}

// --- a person one tap away: from the reader's call to a volunteer's ---------------------------
function showHandover() {
  $("#handover").hidden = !page.withReader;
  $("#get-volunteer").hidden = Boolean(page.handover);
  $("#cancel-handover").hidden = !page.handover;
  if (!page.handover) $("#handover-detail").textContent = "";
}

async function askVolunteer() {
  const message = { type: "call.handover", call: page.callId };
  const texts = page.tools ? page.tools.texts : [];
  const reading = $("#share-reading").checked ? sharedReading(texts) : "";
  if (reading) message.reading = reading;
  try {
    const status = await page.session.request(message);
    page.handover = status.call;
    const text = t("recipient.handover.searching");
    $("#handover-detail").textContent = text;
    showHandover();
    $("#cancel-handover").focus();
    announce(text);
  } catch (err) {
    announce(err instanceof ProtocolError ? err.message : String(err));
  }
}

async function cancelVolunteer() {
  if (!page.handover) return;
  await page.session.request({ type: "call.cancel", call: page.handover }).catch((err) => {
    if (err.code !== "conflict") announce(err.message);
  });
}

// A call.status of the search asked for from the reader's call: said, or taken up after a
// reload. True when it was one.
function handoverStatus(status) {
  if (status.replaces && status.replaces === page.callId && page.assigned) {
    page.handover = status.call;
    $("#handover-detail").textContent = t("recipient.handover.searching");
    showHandover();
    return true;
  }
  if (!page.handover || status.call !== page.handover) return false;
  if (status.escalation || status.state === "queued") announce(progressText(status));
  return true;
}

// A volunteer accepted: the reader's media goes, the camera stays for the volunteer's call.
function handedOver() {
  const next = page.handover;
  page.handover = null;
  if (!next || page.callId === next) return;
  if (page.media) page.media.close();
  page.media = null;
  page.tools = null;
  $("#remote-audio").srcObject = null;
  page.callId = next;
  page.assigned = false;
  page.withReader = false;
  page.joining = true;
  showHandover();
  announce(t("recipient.handover.joining"));
}

// The reader's call ended while a volunteer is being looked for (hung up, or the reader was
// lost): the search goes on, and the page shows it.
function keepSearching() {
  const next = page.handover;
  page.handover = null;
  if (page.media) page.media.close();
  page.media = null;
  page.tools = null;
  $("#remote-audio").srcObject = null;
  page.callId = next;
  page.assigned = false;
  page.withReader = false;
  page.searchStarted = Date.now();
  showHandover();
  showState("searching");
  page.ringback.start();
  searchSay(t("recipient.handover.still-searching"));
}

// The search asked for from the reader's call ended without a volunteer: the reader stays.
function handoverEnded(message) {
  page.handover = null;
  showHandover();
  const text = message.reason === "cancelled" ? t("recipient.handover.cancelled") : t("recipient.handover.nobody");
  announce(text);
  $("#get-volunteer").focus();
}

function onEnded(message) {
  if (page.handover && message.call === page.handover) {
    handoverEnded(message);
    return;
  }
  if (message.call === page.callId && message.reason === "handed_over") {
    handedOver();
    return;
  }
  if (message.call === page.callId && page.handover) {
    keepSearching();
    return;
  }
  if (message.call !== page.callId) return;
  let text = (ENDED[message.reason] || (() => t("recipient.ended.other")))(message.by);
  if (message.reason === "no_answer" && message.retry_after_s) {
    text = t("recipient.ended.no-answer-retry", { when: minutes(message.retry_after_s) });
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
  // Nothing is chosen for the person: a preselected answer would nudge the rating.
  const chosen = document.querySelector('input[name="rating"]:checked');
  if (!chosen) {
    const text = t("recipient.feedback.choose");
    $("#feedback-error").textContent = text;
    announce(text);
    document.querySelector('input[name="rating"]').focus();
    return;
  }
  $("#feedback-error").textContent = "";
  const report = $("#report").value;
  const comment = $("#comment").value.trim();
  const message = { type: "call.feedback", call: page.callId, rating: chosen.value };
  if (report) message.report = report;
  if (comment) message.comment = comment;
  try {
    await page.session.request(message);
    $("#feedback").hidden = true;
    announce(t(report ? "recipient.feedback.sent-with-report" : "recipient.feedback.sent"));
    $("#again").focus();
  } catch (err) {
    announce(err.message);
  }
}

function notice(text) {
  const p = document.createElement("p");
  p.textContent = text;
  return p;
}

async function partners() {
  const box = $("#partners");
  let response;
  try {
    response = await page.session.api("/v1/orgs");
  } catch {
    box.replaceChildren(notice(t("recipient.partners.failed")));
    return;
  }
  if (response.status === 404) {
    box.replaceChildren(notice(t("recipient.partners.none-offered")));
    return;
  }
  const body = response.ok ? await response.json().catch(() => null) : null;
  const orgs = body && Array.isArray(body.orgs) ? body.orgs : Array.isArray(body) ? body : null;
  if (!orgs) {
    box.replaceChildren(notice(t("recipient.partners.failed")));
    return;
  }
  if (orgs.length === 0) {
    box.replaceChildren(notice(t("recipient.partners.empty")));
    return;
  }
  const list = document.createElement("ul");
  list.className = "orgs";
  for (const org of orgs) {
    const item = document.createElement("li");
    const name = document.createElement("h3");
    name.textContent = org.name || org.id;
    item.append(name);
    if (org.description) item.append(notice(org.description));
    const next = org.next_opening ? new Date(org.next_opening) : null;
    item.append(
      notice(
        org.open_now
          ? t("recipient.partners.open")
          : next && !Number.isNaN(next.getTime())
            ? t("recipient.partners.opens", {
                when: formatDateTime(next, { weekday: "long", hour: "numeric", minute: "2-digit" }),
              })
            : t("recipient.partners.closed"),
      ),
    );
    if (org.open_now) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = t("recipient.partners.call", { name: org.name || org.id });
      button.addEventListener("click", () => request({ org: org.id }));
      item.append(button);
    }
    list.append(item);
  }
  box.replaceChildren(list);
}

function mutedText(box, key) {
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = t(key);
  box.replaceChildren(p);
}

async function circle() {
  const box = $("#circle-members");
  const response = await page.session.api("/v1/me/circle").catch(() => null);
  if (!response || !response.ok) {
    const p = document.createElement("p");
    p.textContent = t("recipient.circle.failed");
    box.replaceChildren(p);
    return;
  }
  const { members } = await response.json();
  if (!members.length) {
    mutedText(box, "recipient.circle.empty");
    return;
  }
  const list = document.createElement("ul");
  list.className = "circle";
  for (const member of members) {
    const item = document.createElement("li");
    const name = member.display_name || t("recipient.circle.a-helper");
    item.append(`${name} `);
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = t("recipient.circle.remove", { name });
    button.addEventListener("click", async () => {
      const path = `/v1/me/circle/members/${encodeURIComponent(member.member)}`;
      const answer = await page.session.api(path, { method: "DELETE" }).catch(() => null);
      announce(t(answer && answer.ok ? "recipient.circle.removed" : "recipient.circle.remove-failed", { name }));
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
    announce(body && body.message ? body.message : t("recipient.circle.invite-failed"));
    return;
  }
  const until = formatDateTime(new Date(body.expires_at), { dateStyle: "long" });
  const text = t("recipient.circle.code", { code: body.code, until });
  $("#circle-code").textContent = text;
  announce(text);
}

function languages(profile) {
  const mine = (profile && profile.languages) || [];
  const tags = [...mine, ...LANGUAGES.filter((tag) => !mine.includes(tag))];
  $("#language").replaceChildren(
    ...tags.map((tag) => new Option(languageName(tag), tag, tag === tags[0], tag === tags[0])),
  );
}

async function main() {
  await startLanguage();
  page.session = await startSession("recipient", (session) => {
    session
      .on("call.status", onStatus)
      .on("call.assigned", onAssigned)
      .on("signal", onSignal)
      .on("signal.ack", onSignal)
      .on("call.ended", onEnded);
  });
  languages(await loadProfile(page.session));
  $("#call").addEventListener("click", () => request({}));
  $("#circle-invite").addEventListener("click", invite);
  circle();
  $("#cancel").addEventListener("click", () => hangUp("call.cancel"));
  $("#hang-up").addEventListener("click", () => hangUp("call.end"));
  $("#get-volunteer").addEventListener("click", askVolunteer);
  $("#cancel-handover").addEventListener("click", cancelVolunteer);
  $("#feedback").addEventListener("submit", sendFeedback);
  $("#allow-photos").checked = photosAllowed();
  $("#allow-photos").addEventListener("change", (event) => setPhotosAllowed(event.target.checked));
  $("#again").addEventListener("click", () => {
    showState("idle");
    announce(t("recipient.ready-again"));
  });
  const ringback = $("#ringback");
  setSwitch(ringback, page.ringback.enabled);
  ringback.addEventListener("click", () => {
    unlockAudio();
    page.ringback.enabled = !page.ringback.enabled;
    setSwitch(ringback, page.ringback.enabled);
  });
  $("#preview-pause").addEventListener("click", () => {
    setPreviewPaused($("#preview-pause").getAttribute("aria-pressed") !== "true");
  });
  const name = page.session.welcome.user.display_name;
  if (page.callId) {
    // A search taken up after a reload (see onStatus).
    showState("searching");
    searchSay(t("recipient.signed-in-searching", { name, progress: page.progress || progressText(page.status || {}) }));
  } else {
    showState("idle", { focus: false });
    $("#call").focus();
    announce(t("recipient.signed-in", { name, restriction: restrictionNotice(page.session.welcome) }));
  }
  partners();
}

main();
