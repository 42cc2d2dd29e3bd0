// The operator's console: today's figures, the moderation queue with each case and its
// resolution, user look-up with suspension and reinstatement, statistics with charts, the audit
// log and the partner organisations. It speaks only HTTP (the /v1/admin routes, /v1/stats and
// /v1/orgs): an administrator takes no calls, so the page opens no WebSocket.

import { forgetToken } from "./protocol.js";
import { barChart, dataTable, markScrollable } from "./charts.js";
import { $, announce, languageName, showState, signIn, startLanguage } from "./ui.js";

const page = { token: null, claims: {}, cases: { next: null }, audit: { next: null }, case: null, user: null, busy: false };
window.vabrokerPage = page; // for diagnostics and the browser tests

const REASONS = {
  inappropriate: "Inappropriate behaviour",
  abusive: "Abusive",
  unsafe: "Unsafe",
  privacy: "Privacy",
  poor_quality: "Poor quality",
  other: "Other",
};
const ROLES = { recipient: "recipient", volunteer: "volunteer", agent: "agent", admin: "administrator" };
const AUDIT_ACTIONS = {
  "case.resolve": "Case resolved",
  "user.suspend": "User suspended",
  "user.ban": "User banned",
  "user.reinstate": "User reinstated",
  "user.erase": "User's data erased",
  "org.put": "Organisation saved",
  "retention.sweep": "Retention sweep",
};
const RATINGS = { up: "Helpful", down: "Not helpful" };
const RESOLUTIONS = { dismiss: "Dismissed", warn: "Warned", suspend: "Suspended", ban: "Banned" };
const END_REASONS = {
  completed: "Completed",
  cancelled: "Cancelled",
  no_answer: "Nobody answered",
  peer_lost: "Connection lost",
  failed: "Failed",
  closed: "Organisation closed",
  handed_over: "Handed to a volunteer",
};

// Why the console went back to sign-in, kept across the reload that gets it there.
const PROBLEM_KEY = "vabroker.console-problem";

class ConsoleError extends Error {
  constructor(code, message, status = 0) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

// --- talking to the broker ----------------------------------------------------------------------

// The token's claims, read only to greet the person and to say why a token is refused; the
// broker checks the token on every request.
function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : {};
  } catch {
    return {};
  }
}

function request(path, { method = "GET", body, accept = "application/json" } = {}) {
  const headers = { Authorization: `Bearer ${page.token}`, Accept: accept };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

// The JSON answer of a route, or a ConsoleError carrying the broker's code and message. A token
// the broker stops accepting (it expired) sends the person back to sign-in.
async function api(path, options = {}) {
  let response;
  try {
    response = await request(path, options);
  } catch {
    throw new ConsoleError("unavailable", "Could not reach the service. Check the connection and try again.");
  }
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    // Back to sign-in, and the sign-in page says why (the reload forgets everything else).
    const why = (body && body.message) || "Your sign-in has expired.";
    forgetToken();
    sessionStorage.setItem(PROBLEM_KEY, why);
    location.reload();
    throw new ConsoleError("unauthenticated", why, 401);
  }
  if (!response.ok) {
    throw new ConsoleError(
      (body && body.error) || "unavailable",
      (body && body.message) || `The service answered with status ${response.status}.`,
      response.status,
    );
  }
  return body;
}

const query = (params) => {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== "" && value !== null && value !== undefined) q.set(key, value);
  const text = q.toString();
  return text ? `?${text}` : "";
};

// --- small pieces of text and DOM ---------------------------------------------------------------

const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
const when = (iso) => (iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "—");
const seconds = (s) => (typeof s === "number" ? `${Math.round(s)} s` : "—");
const percent = (p) => (typeof p === "number" ? `${Math.round(p)}%` : "—");
const person = (p) => (p ? `${p.id} (${ROLES[p.role] || p.role})` : "—");
const reasonText = (r) => REASONS[r] || r;

function element(name, text = "", className = "") {
  const node = document.createElement(name);
  if (text) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// A description list of [term, value] pairs; a value may be a node.
function facts(pairs, className = "facts") {
  const list = element("dl", "", className);
  for (const [term, value] of pairs) {
    const item = element("div");
    const dd = element("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value ?? "—";
    item.append(element("dt", term), dd);
    list.append(item);
  }
  return list;
}

function restrictionText(r) {
  if (!r) return "Not restricted.";
  const kind = r.kind === "banned" ? "Banned" : "Suspended";
  const until = r.kind === "banned" ? "" : r.until ? ` until ${when(r.until)}` : " until an administrator reinstates them";
  const message = r.message ? ` Reason: ${r.message}` : "";
  return `${kind} since ${when(r.since)}${until}.${message}`;
}

// Marks ``field`` as wrong with ``message`` (said, shown next to it, and focused), or clears it.
function fieldError(field, errorBox, message) {
  errorBox.textContent = message || "";
  if (message) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
    announce(message);
  } else {
    field.removeAttribute("aria-invalid");
  }
}

// "" → null (no end); a whole number of days 1–3650 → the number; anything else → an error text.
function parseDays(text) {
  const value = text.trim();
  if (!value) return { days: null };
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 3650) {
    return { error: "Days must be a whole number from 1 to 3650, or empty for no end date." };
  }
  return { days: Number(value) };
}

// --- views --------------------------------------------------------------------------------------

const NAV_OF = { overview: "overview", cases: "cases", case: "cases", user: "user", stats: "stats", audit: "audit", orgs: "orgs" };

// Shows a view and marks its entry in the navigation; focus goes to ``target`` (an element),
// else to the view's heading, so that a screen reader starts reading where the view starts.
function show(view, target = null) {
  showState(view, { focus: false });
  for (const button of document.querySelectorAll("#console-nav button")) {
    if (button.dataset.view === NAV_OF[view]) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  (target || document.querySelector(`section[data-state~="${view}"] h2`)).focus();
}

function failed(box, err) {
  box.replaceChildren(element("p", err.message, "error"));
  announce(err.message);
}

// --- overview -----------------------------------------------------------------------------------

function openCasesText(n) {
  return n === 0 ? "No open cases." : `${plural(n, "open case")}.`;
}

function renderOverview(o) {
  const today = o.today || {};
  const answer = today.answer_s || {};
  $("#overview").replaceChildren(
    facts(
      [
        ["Calls today", String(today.created ?? 0)],
        ["Answered", `${today.answered ?? 0} (${percent(today.answered_pct)})`],
        ["Time to answer, median", seconds(answer.p50)],
        ["Time to answer, 90% within", seconds(answer.p90)],
        ["Helpers on duty", String(o.helpers_on_duty ?? 0)],
        ["Open cases", String(o.open_cases ?? 0)],
      ],
      "facts figures",
    ),
  );
  const review = $("#review-cases");
  review.textContent = o.open_cases ? `Review ${plural(o.open_cases, "open case")}` : "Open the moderation queue";
}

function overviewText(o) {
  const today = o.today || {};
  return (
    `Today: ${plural(today.created ?? 0, "call")}, ${today.answered ?? 0} answered. ` +
    `${plural(o.helpers_on_duty ?? 0, "helper")} on duty. ${openCasesText(o.open_cases ?? 0)}`
  );
}

async function openOverview() {
  show("overview");
  try {
    const o = await api("/v1/admin/overview");
    renderOverview(o);
    announce(overviewText(o));
  } catch (err) {
    failed($("#overview"), err);
  }
}

// --- the moderation queue -----------------------------------------------------------------------

function caseTable(caption, cases) {
  const wrap = dataTable(
    caption,
    ["Opened", "Reason", "Reported", "Reported by", "Language", "State", "Case"],
    cases.map((c) => [
      when(c.opened_at),
      reasonText(c.reason),
      person(c.reported),
      person(c.reporter),
      c.call && c.call.language ? languageName(c.call.language) : "—",
      c.state === "open" ? "Open" : `Resolved: ${RESOLUTIONS[c.resolution?.action] || "—"}`,
      "",
    ]),
  );
  wrap.querySelectorAll("tbody tr").forEach((row, i) => row.lastElementChild.append(reviewButton(cases[i])));
  return wrap;
}

function reviewButton(c) {
  const button = element("button", "Review", "review");
  button.type = "button";
  button.dataset.case = c.id;
  button.append(element("span", ` the ${reasonText(c.reason).toLowerCase()} report about ${c.reported?.id}`, "visually-hidden"));
  button.addEventListener("click", () => openCase(c.id));
  return button;
}

function caseFilter() {
  return {
    state: $("#case-state").value,
    reason: $("#case-reason").value,
    user: $("#case-user").value.trim(),
  };
}

function caseListText(count, more) {
  const f = caseFilter();
  const what = f.state === "open" ? "open case" : "resolved case";
  if (count === 0) {
    if (f.reason || f.user) return `No ${what}s match.`;
    return f.state === "open" ? "No open cases. The moderation queue is empty." : "No resolved cases yet.";
  }
  return `${plural(count, what)}${more ? " shown; there are more" : ""}.`;
}

// Loads the first page of cases. ``focusFirst``: focus the first case's Review button (after
// "Review open cases"); otherwise the heading.
async function openCases({ focusFirst = false } = {}) {
  show("cases");
  const box = $("#cases");
  try {
    const answer = await api(`/v1/admin/cases${query({ ...caseFilter(), limit: 20 })}`);
    page.cases = { list: answer.cases, next: answer.next };
    renderCases();
    announce(`Moderation queue: ${caseListText(answer.cases.length, Boolean(answer.next))}`);
    const first = box.querySelector("button.review");
    if (focusFirst && first) first.focus();
  } catch (err) {
    failed(box, err);
  }
}

function renderCases() {
  const { list, next } = page.cases;
  const box = $("#cases");
  if (!list.length) box.replaceChildren(element("p", caseListText(0, false)));
  else box.replaceChildren(caseTable(caseListText(list.length, Boolean(next)), list));
  $("#more-cases").hidden = !next;
}

async function moreCases() {
  try {
    const answer = await api(`/v1/admin/cases${query({ ...caseFilter(), limit: 20, cursor: page.cases.next })}`);
    const before = page.cases.list.length;
    page.cases = { list: page.cases.list.concat(answer.cases), next: answer.next };
    renderCases();
    announce(`${plural(answer.cases.length, "more case")} shown.`);
    const buttons = $("#cases").querySelectorAll("button.review");
    (buttons[before] || $("#h-cases")).focus();
  } catch (err) {
    announce(err.message);
  }
}

// --- one case -----------------------------------------------------------------------------------

function lookUpButton(label, userId) {
  const button = element("button", label);
  button.type = "button";
  button.addEventListener("click", () => openUser(userId));
  return button;
}

function renderCase(c) {
  page.case = c;
  $("#h-case").textContent = `Case ${c.id}: ${reasonText(c.reason)}`;
  const call = c.call || {};
  const parts = [
    facts([
      ["State", c.state === "open" ? "Open" : "Resolved"],
      ["Reason", reasonText(c.reason)],
      ["Opened", when(c.opened_at)],
      ["Organisation", c.org || "None (volunteer help)"],
      ["Reported", person(c.reported)],
      ["Reported by", person(c.reporter)],
      ["Reporter's comment", c.comment || "None"],
    ]),
    lookUpButton(`Look up ${c.reported.id}`, c.reported.id),
    lookUpButton(`Look up ${c.reporter.id}`, c.reporter.id),
    element("h3", "The call"),
    facts([
      ["Call", call.id || "—"],
      ["Language", call.language ? languageName(call.language) : "—"],
      ["Topic", call.topic || "Not given"],
      ["Requested", when(call.requested)],
      ["Answered", when(call.answered)],
      ["Ended", when(call.ended)],
      ["How it ended", END_REASONS[call.end_reason] || call.end_reason || "—"],
      ["Duration", seconds(call.duration_s)],
    ]),
  ];
  const feedback = Array.isArray(c.feedback) ? c.feedback : [];
  parts.push(
    feedback.length
      ? dataTable(
          "Feedback on the call",
          ["From", "Rating", "Report", "Comment", "When"],
          feedback.map((f) => [
            f.user,
            RATINGS[f.rating] || f.rating || "—",
            f.report ? reasonText(f.report) : "None",
            f.comment || "",
            when(f.at),
          ]),
        )
      : element("p", "No feedback on the call.", "muted"),
  );
  if (c.resolution) {
    const r = c.resolution;
    const heading = element("h3", "Resolution");
    heading.id = "h-resolution";
    heading.tabIndex = -1;
    parts.push(
      heading,
      facts([
        ["Action", RESOLUTIONS[r.action] || r.action],
        ...(r.action === "suspend" ? [["For", r.days ? plural(r.days, "day") : "Until reinstated"]] : []),
        ["Note", r.note],
        ["By", r.by],
        ["At", when(r.at)],
      ]),
    );
  }
  $("#case-detail").replaceChildren(...parts);
  const form = $("#resolve-form");
  form.hidden = c.state !== "open";
  if (!form.hidden) {
    form.reset();
    $("#resolve-who").textContent = person(c.reported);
    $("#days-field").hidden = true;
    fieldError($("#resolve-note"), $("#resolve-error"), "");
    fieldError($("#resolve-days"), $("#resolve-days-error"), "");
  }
}

async function openCase(id) {
  try {
    const c = await api(`/v1/admin/cases/${encodeURIComponent(id)}`);
    renderCase(c);
    if (c.state === "open") {
      show("case", document.querySelector('input[name="action"]:checked'));
      announce(
        `Case ${c.id}: ${reasonText(c.reason)}, ${person(c.reported)} reported by ${person(c.reporter)}. ` +
          "Choose what to do, write a note, then resolve the case.",
      );
    } else {
      show("case");
      announce(`Case ${c.id} was resolved: ${RESOLUTIONS[c.resolution?.action] || "resolved"}.`);
    }
  } catch (err) {
    announce(err.message);
  }
}

function outcomeText(c) {
  const who = c.reported.id;
  const r = c.resolution || {};
  if (r.action === "dismiss") return "Dismissed: no action.";
  if (r.action === "warn") return `${who} was warned.`;
  if (r.action === "ban") return `${who} is banned.`;
  return r.days ? `${who} is suspended for ${plural(r.days, "day")}.` : `${who} is suspended until reinstated.`;
}

// The confirmation before a suspension or a ban: a modal dialog (showModal keeps focus in it and
// makes the rest of the page inert). Focus starts on Cancel, the choice that changes nothing.
function confirmAction({ title, text, yes }) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = yes;
  return new Promise((resolve) => {
    let answer = false;
    const finish = (value) => {
      answer = value;
      dialog.close();
    };
    $("#confirm-yes").onclick = () => finish(true);
    $("#confirm-cancel").onclick = () => finish(false);
    dialog.addEventListener("close", () => resolve(answer), { once: true }); // Escape too
    dialog.showModal();
    $("#confirm-cancel").focus();
    announce(`${title} ${text} Confirm with ${yes}, or Cancel.`);
  });
}

// One decision at a time: a second Enter while the first is being sent does nothing.
async function once(work) {
  if (page.busy) return;
  page.busy = true;
  try {
    await work();
  } finally {
    page.busy = false;
  }
}

async function resolveCase(event) {
  event.preventDefault();
  await once(() => decideCase());
}

async function decideCase() {
  const c = page.case;
  const action = document.querySelector('input[name="action"]:checked').value;
  const note = $("#resolve-note").value.trim();
  const daysField = $("#resolve-days");
  fieldError(daysField, $("#resolve-days-error"), "");
  fieldError($("#resolve-note"), $("#resolve-error"), "");
  let days = null;
  if (action === "suspend") {
    const parsed = parseDays(daysField.value);
    if (parsed.error) return fieldError(daysField, $("#resolve-days-error"), parsed.error);
    days = parsed.days;
  }
  if (!note) return fieldError($("#resolve-note"), $("#resolve-error"), "Write a note for the record before resolving the case.");
  if (action === "suspend" || action === "ban") {
    const who = person(c.reported);
    const ok = await confirmAction(
      action === "ban"
        ? { title: `Ban ${c.reported.id}?`, text: `${who} will be signed out and can no longer sign in.`, yes: "Ban" }
        : {
            title: `Suspend ${c.reported.id}?`,
            text: `${who} can take or make no calls ${days ? `for ${plural(days, "day")}` : "until an administrator reinstates them"}.`,
            yes: "Suspend",
          },
    );
    if (!ok) {
      $("#resolve").focus();
      announce("Nothing was changed. The case is still open.");
      return;
    }
  }
  const body = { action, note };
  if (days !== null) body.days = days;
  try {
    const resolved = await api(`/v1/admin/cases/${encodeURIComponent(c.id)}/resolve`, { method: "POST", body });
    renderCase(resolved);
    $("#back-to-cases").focus();
    let left = "";
    try {
      left = ` ${openCasesText((await api("/v1/admin/overview")).open_cases ?? 0)}`;
    } catch {
      left = "";
    }
    announce(`Case ${resolved.id} resolved. ${outcomeText(resolved)}${left}`);
  } catch (err) {
    if (err.status === 409) {
      // Someone else resolved it meanwhile: show what they decided.
      await openCase(c.id);
      announce(`${err.message} The case shows the resolution now.`);
      return;
    }
    $("#resolve-error").textContent = err.message;
    $("#resolve").focus();
    announce(err.message);
  }
}

// --- user look-up -------------------------------------------------------------------------------

function renderUser(u, id) {
  page.user = { ...u, id };
  const profile = u.profile || {};
  const counts = u.counts || {};
  const heading = element("h3", `${profile.display_name || id} (${id})`);
  heading.id = "h-user-name";
  heading.tabIndex = -1;
  const restriction = element("p", restrictionText(u.restriction), u.restriction ? "restriction" : "");
  restriction.id = "user-restriction";
  restriction.tabIndex = -1;
  const parts = [
    heading,
    facts([
      ["Role", ROLES[profile.role] || profile.role || "—"],
      ["Organisation", profile.org || "None"],
      ["Languages", Array.isArray(profile.languages) ? profile.languages.map(languageName).join(", ") : "—"],
      ["Time zone", profile.timezone || "—"],
    ]),
    element("h3", "Restriction"),
    restriction,
    element("h3", "Counts"),
    facts(
      [
        ["Calls", String(counts.calls ?? 0)],
        ["Answered", String(counts.answered ?? 0)],
        ["Reports received", String(counts.reports_received ?? 0)],
        ["Reports given", String(counts.reports_given ?? 0)],
        ["Warnings", String(counts.warnings ?? 0)],
      ],
      "facts figures",
    ),
  ];
  for (const [title, list] of [
    ["Reports received", u.reports_received],
    ["Reports given", u.reports_given],
  ]) {
    parts.push(element("h3", title));
    parts.push(Array.isArray(list) && list.length ? caseTable(`${title}: ${list.length}`, list) : element("p", "None.", "muted"));
  }
  $("#user-detail").replaceChildren(...parts);
  const r = u.restriction;
  const form = $("#restrict-form");
  form.hidden = false;
  form.reset();
  fieldError($("#restrict-reason"), $("#restrict-error"), "");
  fieldError($("#restrict-days"), $("#restrict-days-error"), "");
  $("#restrict-days-field").hidden = Boolean(r);
  $("#suspend-user").hidden = Boolean(r);
  $("#ban-user").hidden = Boolean(r && r.kind === "banned");
  $("#reinstate-user").hidden = !r;
}

function userText(u, id) {
  const profile = u.profile || {};
  const counts = u.counts || {};
  return (
    `${profile.display_name || id}, ${ROLES[profile.role] || profile.role || "user"}. ${restrictionText(u.restriction)} ` +
    `${plural(counts.reports_received ?? 0, "report")} received, ${counts.reports_given ?? 0} given.`
  );
}

async function loadUser(id) {
  const u = await api(`/v1/admin/users/${encodeURIComponent(id)}`);
  renderUser(u, id);
  return u;
}

async function openUser(id) {
  $("#lookup-id").value = id;
  show("user", $("#lookup-id"));
  await lookUp();
}

async function lookUp(event) {
  if (event) event.preventDefault();
  const field = $("#lookup-id");
  const id = field.value.trim();
  fieldError(field, $("#lookup-error"), "");
  if (!id) return fieldError(field, $("#lookup-error"), "Type the id of the user to look up.");
  try {
    const u = await loadUser(id);
    $("#h-user-name").focus();
    announce(userText(u, id));
  } catch (err) {
    $("#user-detail").replaceChildren();
    $("#restrict-form").hidden = true;
    page.user = null;
    fieldError(field, $("#lookup-error"), err.status === 404 ? `No user with the id ${id}.` : err.message);
  }
}

async function restrict(kind) {
  const u = page.user;
  const reasonField = $("#restrict-reason");
  const reason = reasonField.value.trim();
  fieldError(reasonField, $("#restrict-error"), "");
  fieldError($("#restrict-days"), $("#restrict-days-error"), "");
  let days = null;
  if (kind === "suspend") {
    const parsed = parseDays($("#restrict-days").value);
    if (parsed.error) return fieldError($("#restrict-days"), $("#restrict-days-error"), parsed.error);
    days = parsed.days;
  }
  const what = { suspend: "suspending", ban: "banning", reinstate: "reinstating" }[kind];
  if (!reason) return fieldError(reasonField, $("#restrict-error"), `Write the reason for ${what} ${u.id}.`);
  if (kind !== "reinstate") {
    const ok = await confirmAction(
      kind === "ban"
        ? { title: `Ban ${u.id}?`, text: `${u.id} will be signed out and can no longer sign in.`, yes: "Ban" }
        : {
            title: `Suspend ${u.id}?`,
            text: `${u.id} can take or make no calls ${days ? `for ${plural(days, "day")}` : "until an administrator reinstates them"}.`,
            yes: "Suspend",
          },
    );
    if (!ok) {
      $(`#${kind}-user`).focus();
      announce(`Nothing was changed. ${u.id} is ${u.restriction ? "still restricted" : "not restricted"}.`);
      return;
    }
  }
  const body = { reason };
  if (days !== null) body.days = days;
  try {
    await api(`/v1/admin/users/${encodeURIComponent(u.id)}/${kind}`, { method: "POST", body });
    const fresh = await loadUser(u.id);
    $("#user-restriction").focus();
    announce(kind === "reinstate" ? `${u.id} is reinstated.` : `${u.id}: ${restrictionText(fresh.restriction)}`);
  } catch (err) {
    fieldError(reasonField, $("#restrict-error"), err.message);
  }
}

// --- statistics ---------------------------------------------------------------------------------

const DAY_S = 86400;

function statsPeriod() {
  const choice = $("#stats-period").value;
  // Whole UTC days, up to the end of today (the broker answers at most about ten years at once).
  const until = (Math.floor(Date.now() / 1000 / DAY_S) + 1) * DAY_S;
  return { since: until - Number(choice) * DAY_S, until };
}

// "2026-11" → "November 2026" (long) or "Nov" (short, under a bar; the caption names the years).
function monthLabel(month, style) {
  const [year, m] = month.split("-").map(Number);
  const date = new Date(Date.UTC(year, m - 1, 1));
  if (style === "short") return date.toLocaleString("en-GB", { month: "short", timeZone: "UTC" }).slice(0, 3);
  return date.toLocaleString("en-GB", { month: "long", year: "numeric", timeZone: "UTC" });
}

function bucketLabel(le, previous) {
  if (le === null || le === undefined) return previous === null ? "any time" : `over ${previous} s`;
  return previous === null ? `up to ${le} s` : `${previous}–${le} s`;
}

function renderStats(s) {
  const total = s.total || {};
  const box = $("#stats");
  if (!total.created) {
    box.replaceChildren(element("p", "No calls in this period."));
    return "No calls in this period.";
  }
  const answer = total.answer_s || {};
  const parts = [
    element("h3", "The period"),
    facts(
      [
        ["Calls", String(total.created)],
        ["Answered", String(total.answered ?? 0)],
        ["Completed", `${total.completed ?? 0} (${percent(total.completed_pct)})`],
        ["Time to answer, median", seconds(answer.p50)],
        ["Time to answer, 90% within", seconds(answer.p90)],
      ],
      "facts figures",
    ),
  ];
  const monthly = Array.isArray(s.monthly)
    ? s.monthly
    : Object.entries(s.by_month || {}).map(([month, m]) => ({ month, created: m.created, completed: m.completed, completed_pct: m.completed_pct }));
  const charts = element("div", "", "charts");
  if (monthly.length) {
    const names = monthly.map((m) => monthLabel(m.month, "long"));
    const short = monthly.map((m) => monthLabel(m.month, "short"));
    const range = names.length > 1 ? `${names[0]} to ${names[names.length - 1]}` : names[0];
    charts.append(
      barChart({
        title: `Calls created and completed, by month (${range})`,
        summary: `${plural(monthly.length, "month")}.`,
        categories: short,
        series: [
          { name: "Created", className: "s-created", values: monthly.map((m) => m.created) },
          { name: "Completed", className: "s-completed", values: monthly.map((m) => m.completed) },
        ],
        table: {
          caption: "Calls by month",
          columns: ["Month", "Created", "Completed"],
          rows: monthly.map((m, i) => [names[i], String(m.created), String(m.completed)]),
        },
      }),
      barChart({
        title: `Share of calls completed, by month (${range})`,
        summary:
          `From ${percent(monthly[0].completed_pct)} in ${names[0]} ` +
          `to ${percent(monthly[monthly.length - 1].completed_pct)} in ${names[names.length - 1]}.`,
        categories: short,
        series: [{ name: "Completed", className: "s-completed", values: monthly.map((m) => m.completed_pct) }],
        unit: "%",
        max: 100,
        table: {
          caption: "Share completed by month",
          columns: ["Month", "Completed (%)"],
          rows: monthly.map((m, i) => [names[i], percent(m.completed_pct)]),
        },
      }),
    );
  }
  const histogram = Array.isArray(s.answer_histogram) ? s.answer_histogram : [];
  if (histogram.some((b) => b.count > 0)) {
    let previous = null;
    const labels = histogram.map((b) => {
      const label = bucketLabel(b.le, previous);
      previous = b.le;
      return label;
    });
    // Under the bars: the upper bound of each bucket ("≤ 10"), the last one open ("> 120").
    const bounds = histogram.map((b, i) => (b.le === null || b.le === undefined ? `> ${histogram[i - 1]?.le ?? 0}` : `≤ ${b.le}`));
    const answered = histogram.reduce((sum, b) => sum + b.count, 0);
    charts.append(
      barChart({
        title: "Time to answer, in seconds",
        summary: `${plural(answered, "answered call")}; half within ${seconds(answer.p50)}, 90% within ${seconds(answer.p90)}.`,
        categories: bounds,
        series: [{ name: "Answered calls", className: "s-answered", values: histogram.map((b) => b.count) }],
        table: {
          caption: "Answered calls by time to answer",
          columns: ["Answered within", "Calls"],
          rows: histogram.map((b, i) => [labels[i], String(b.count)]),
        },
      }),
    );
  }
  const languages = Object.entries(s.by_language || {});
  if (languages.length) {
    const labels = languages.map(([tag]) => languageName(tag));
    charts.append(
      barChart({
        title: "Calls by language",
        summary: `${plural(languages.length, "language")}.`,
        categories: labels,
        series: [
          { name: "Created", className: "s-created", values: languages.map(([, l]) => l.created) },
          { name: "Completed", className: "s-completed", values: languages.map(([, l]) => l.completed) },
        ],
        table: {
          caption: "Calls by language",
          columns: ["Language", "Created", "Completed", "Completed (%)", "Median answer"],
          rows: languages.map(([, l], i) => [labels[i], String(l.created), String(l.completed), percent(l.completed_pct), seconds(l.answer_s?.p50)]),
        },
      }),
    );
  }
  parts.push(charts);
  const orgs = Object.entries(s.by_org || {});
  if (orgs.length) {
    parts.push(
      element("h3", "By organisation"),
      dataTable(
        "Calls by organisation",
        ["Organisation", "Created", "Answered", "Completed", "Completed (%)"],
        orgs.map(([id, o]) => [id, String(o.created), String(o.answered), String(o.completed), percent(o.completed_pct)]),
      ),
    );
  }
  box.replaceChildren(...parts);
  return `Statistics: ${plural(total.created, "call")}, ${percent(total.completed_pct)} completed. Each chart is followed by its figures as a table.`;
}

async function openStats(event) {
  if (event) event.preventDefault();
  if (!event) show("stats");
  try {
    announce(renderStats(await api(`/v1/stats${query(statsPeriod())}`)));
  } catch (err) {
    failed($("#stats"), err);
  }
  if (!event) await openCoverage();
}

// --- coverage gaps ------------------------------------------------------------------------------

const WEEK = [
  ["mon", "Monday"],
  ["tue", "Tuesday"],
  ["wed", "Wednesday"],
  ["thu", "Thursday"],
  ["fri", "Friday"],
  ["sat", "Saturday"],
  ["sun", "Sunday"],
];
const HOURS = [...Array(24).keys()].map((h) => String(h).padStart(2, "0"));

function gapOf(c) {
  if (c.requests > 0 && c.volunteers === 0) return ["gap-short", "short"];
  if (c.requests > 0 && c.answered_pct !== null && c.answered_pct < 80) return ["gap-thin", "thin"];
  return ["", ""];
}

function renderCoverage(report, language) {
  const box = $("#coverage");
  const cells = report.cells.filter((c) => c.language === language);
  if (!cells.length) {
    box.replaceChildren(element("p", "No volunteer requests in the last 30 days."));
    return "Coverage: no volunteer requests in the last 30 days.";
  }
  const at = new Map(cells.map((c) => [`${c.weekday}-${c.hour}`, c]));
  const rows = WEEK.map(([key, name]) => [
    name,
    ...HOURS.map((_, h) => {
      const c = at.get(`${key}-${h}`);
      const [, word] = gapOf(c);
      return `${c.requests}/${c.volunteers}${word ? ` ${word}` : ""}`;
    }),
  ]);
  const heat = dataTable(
    `${languageName(language)}: requests/volunteers by hour of the week (${report.timezone})`,
    ["Day", ...HOURS],
    rows,
  );
  heat.querySelectorAll("tbody tr").forEach((tr, d) => {
    tr.querySelectorAll("td").forEach((td, h) => {
      const [level] = gapOf(at.get(`${WEEK[d][0]}-${h}`));
      if (level) td.className = level;
    });
  });
  const busy = cells.filter((c) => c.requests > 0);
  const dayName = Object.fromEntries(WEEK);
  const detail = dataTable(
    `${languageName(language)}: hours with requests`,
    ["Hour", "Requests", "Answered", "90% answered within (s)", "Volunteers on duty"],
    busy.map((c) => [
      `${dayName[c.weekday]} ${String(c.hour).padStart(2, "0")}:00`,
      String(c.requests),
      percent(c.answered_pct),
      c.p90_answer_s === null ? "—" : String(c.p90_answer_s),
      String(c.volunteers),
    ]),
  );
  box.replaceChildren(heat, detail);
  markScrollable(box); // now, not a frame later: the heat map is wide from the start
  const short = cells.filter((c) => gapOf(c)[1] === "short").length;
  return `Coverage in ${languageName(language)}: ${plural(short, "hour")} with requests and nobody to ring.`;
}

async function openCoverage(event) {
  if (event) event.preventDefault();
  if (page.claims.org) {
    $("#coverage-part").hidden = true; // the volunteer network's, not an organisation's
    return;
  }
  const tz = $("#coverage-tz");
  if (!tz.value) tz.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  try {
    const report = await api(`/v1/stats/coverage${query({ tz: tz.value.trim() })}`);
    const select = $("#coverage-language");
    const chosen = select.value;
    select.replaceChildren(...report.languages.map((l) => new Option(languageName(l), l)));
    if (report.languages.includes(chosen)) select.value = chosen;
    const said = renderCoverage(report, select.value);
    if (event) announce(said);
  } catch (err) {
    failed($("#coverage"), err);
  }
}

// --- the audit log ------------------------------------------------------------------------------

function auditFilter() {
  return { actor: $("#audit-actor").value.trim(), target: $("#audit-target").value.trim(), action: $("#audit-action").value };
}

// A value of an entry's detail: times (Unix seconds or ISO 8601, under keys such as "until")
// as dates, anything else as it is.
function detailText(key, value) {
  if (/(^|_)(at|since|until)$/.test(key)) {
    if (typeof value === "number") return when(new Date(value * 1000).toISOString());
    if (typeof value === "string" && !Number.isNaN(Date.parse(value))) return when(value);
  }
  return value !== null && typeof value === "object" ? JSON.stringify(value) : String(value);
}

function renderAudit() {
  const { list, next } = page.audit;
  const box = $("#audit");
  if (!list.length) {
    box.replaceChildren(element("p", "No entries match."));
  } else {
    box.replaceChildren(
      dataTable(
        `${plural(list.length, "entry", "entries")}${next ? ", newest first; there are more" : ", newest first"}`,
        ["When", "Actor", "Action", "Target", "Reason", "Detail"],
        list.map((e) => [
          when(e.at),
          e.actor === "system" ? "System" : `${e.actor}${e.actor_role ? ` (${ROLES[e.actor_role] || e.actor_role})` : ""}`,
          AUDIT_ACTIONS[e.action] || e.action,
          e.target || "—",
          e.reason || "",
          Object.entries(e.detail || {})
            .map(([k, v]) => `${k}: ${detailText(k, v)}`)
            .join("; "),
        ]),
      ),
    );
  }
  $("#more-audit").hidden = !next;
}

async function openAudit(event) {
  if (event) event.preventDefault();
  if (!event) show("audit");
  try {
    const answer = await api(`/v1/admin/audit${query({ ...auditFilter(), limit: 50 })}`);
    page.audit = { list: answer.entries, next: answer.next };
    renderAudit();
    const count = answer.entries.length ? plural(answer.entries.length, "entry", "entries") : "no entries match";
    announce(`Audit log: ${count}${answer.next ? " shown; there are more" : ""}.`);
  } catch (err) {
    failed($("#audit"), err);
  }
}

async function moreAudit() {
  try {
    const answer = await api(`/v1/admin/audit${query({ ...auditFilter(), limit: 50, cursor: page.audit.next })}`);
    page.audit = { list: page.audit.list.concat(answer.entries), next: answer.next };
    renderAudit();
    announce(`${plural(answer.entries.length, "more entry", "more entries")} shown.`);
    if (!answer.next) $("#h-audit").focus();
  } catch (err) {
    announce(err.message);
  }
}

async function auditCsv() {
  const response = await request(`/v1/admin/audit${query({ ...auditFilter(), format: "csv" })}`, { accept: "text/csv" }).catch(() => null);
  if (!response || !response.ok) {
    announce("The audit log could not be downloaded.");
    return;
  }
  // The API needs the token in a header, so the file is fetched here and handed to the browser.
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = "audit.csv";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  announce("The audit log was downloaded as audit.csv.");
}

// --- organisations ------------------------------------------------------------------------------

async function openOrgs(event) {
  if (!event || event.currentTarget !== $("#refresh-orgs")) show("orgs");
  const box = $("#orgs");
  let answer;
  try {
    answer = await api("/v1/orgs");
  } catch (err) {
    if (err.status === 404) {
      box.replaceChildren(element("p", "This broker offers no partner organisations."));
      announce("This broker offers no partner organisations.");
      return;
    }
    return failed(box, err);
  }
  const orgs = Array.isArray(answer) ? answer : answer.orgs || [];
  const open = orgs.filter((o) => o.open_now).length;
  const summary = `${plural(orgs.length, "organisation")}: ${open} open now, ${orgs.length - open} closed.`;
  if (!orgs.length) {
    box.replaceChildren(element("p", "No partner organisations yet."));
  } else {
    box.replaceChildren(
      dataTable(
        summary,
        ["Organisation", "Id", "Now", "Closes or opens", "Languages", "Queues"],
        orgs.map((o) => [
          o.name || o.id,
          o.id,
          o.open_now ? "Open" : "Closed",
          o.open_now
            ? o.closes_at
              ? `Closes ${when(o.closes_at)}`
              : "Open round the clock"
            : o.next_opening
              ? `Opens ${when(o.next_opening)}`
              : "No opening within a year",
          (o.languages || []).map(languageName).join(", "),
          (o.queues || []).map((q) => q.name || q.id).join(", "),
        ]),
      ),
    );
  }
  announce(orgs.length ? `Organisations: ${summary}` : "No partner organisations yet.");
}

// --- signing in ---------------------------------------------------------------------------------

// Signs in like the other pages (fragment, this tab's storage, postMessage or demo sign-in);
// the first overview request checks the token: a refused one, or one for another role, sends
// the person back to sign-in, saying why.
async function signInAsAdmin() {
  let problem = sessionStorage.getItem(PROBLEM_KEY) || "";
  sessionStorage.removeItem(PROBLEM_KEY);
  for (;;) {
    const token = await signIn("admin", problem);
    page.token = token;
    page.claims = claimsOf(token);
    let response;
    try {
      response = await request("/v1/admin/overview");
    } catch {
      response = null;
    }
    if (response && response.ok) return response.json();
    if (!response || response.status >= 500) {
      announce("Could not reach the service. Trying again…");
      await new Promise((wake) => setTimeout(wake, 2000));
      sessionStorage.setItem("vabroker.token", token);
      problem = "";
      continue;
    }
    const body = await response.json().catch(() => ({}));
    const role = page.claims.role;
    if (response.status === 403 && role && role !== "admin") {
      problem = `This page is for administrators, and you signed in as a ${ROLES[role] || role}.`;
    } else if (response.status === 404) {
      problem = "This broker has no administration routes.";
    } else {
      problem = body.message || "The sign-in was refused.";
    }
    forgetToken();
  }
}

function fillSelect(select, options) {
  for (const [value, label] of Object.entries(options)) select.append(new Option(label, value));
}

async function main() {
  // The console's own words are English only for now (docs/pages.md); the shared sign-in
  // words come from the English catalog so that the console reads in one language.
  await startLanguage("en");
  fillSelect($("#case-reason"), REASONS);
  fillSelect($("#audit-action"), AUDIT_ACTIONS);
  const overview = await signInAsAdmin();
  const name = page.claims.name || page.claims.sub || "administrator";
  const scope = page.claims.org ? ` of ${page.claims.org}` : "";
  $("#admin-who").textContent = `— ${name}${scope}`;
  $("#console-nav").hidden = false;
  const views = {
    overview: openOverview,
    cases: () => openCases(),
    user: () => show("user", $("#lookup-id")),
    stats: () => openStats(),
    audit: () => openAudit(),
    orgs: () => openOrgs(),
  };
  for (const button of document.querySelectorAll("#console-nav button")) {
    button.addEventListener("click", () => views[button.dataset.view]());
  }
  $("#review-cases").addEventListener("click", () => openCases({ focusFirst: true }));
  $("#case-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    openCases({ focusFirst: false });
  });
  $("#more-cases").addEventListener("click", moreCases);
  $("#back-to-cases").addEventListener("click", () => openCases({ focusFirst: true }));
  for (const radio of document.querySelectorAll('input[name="action"]')) {
    radio.addEventListener("change", () => {
      $("#days-field").hidden = document.querySelector('input[name="action"]:checked').value !== "suspend";
    });
  }
  $("#resolve-form").addEventListener("submit", resolveCase);
  $("#lookup-form").addEventListener("submit", lookUp);
  for (const kind of ["suspend", "ban", "reinstate"]) {
    $(`#${kind}-user`).addEventListener("click", () => once(() => restrict(kind)));
  }
  $("#stats-form").addEventListener("submit", openStats);
  $("#coverage-form").addEventListener("submit", openCoverage);
  $("#audit-form").addEventListener("submit", openAudit);
  $("#more-audit").addEventListener("click", moreAudit);
  $("#audit-csv").addEventListener("click", auditCsv);
  $("#refresh-orgs").addEventListener("click", openOrgs);

  const rescan = () => requestAnimationFrame(() => markScrollable());
  new MutationObserver(rescan).observe($("main"), { childList: true, subtree: true });
  addEventListener("resize", rescan);

  renderOverview(overview);
  show("overview", $("#review-cases"));
  announce(`Signed in as ${name}${scope}, administrator. ${overviewText(overview)}`);
}

main();
