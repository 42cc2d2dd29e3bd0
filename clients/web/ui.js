// What the pages share on screen: the live region, switching between a page's states (and the
// window title that says it in a background tab), moving focus, and signing in. Every word comes
// from the message catalogs (i18n.js).

import { fromProfile, languageName, t, translate, useLanguage } from "./i18n.js";
import { Session, demoSignIn, forgetToken, tokenFromLocation, tokenFromMessage } from "./protocol.js";

export { languageName, t };

export const $ = (selector) => document.querySelector(selector);

// Every state change is said in the page's live region (role="status"). Clearing it first
// makes a screen reader announce a repeated sentence again.
export function announce(text) {
  const region = $("#live");
  region.textContent = "";
  // The next frame, so that assistive technology sees a change even for the same text.
  requestAnimationFrame(() => {
    region.textContent = text;
  });
  region.dataset.said = text;
}

// Shows the <section data-state=NAME> of the page and hides the others; focus goes to the
// element marked data-focus in it (or its heading), so keyboard and screen-reader users land
// where the next thing to do is.
export function showState(name, { focus = true } = {}) {
  document.body.dataset.state = name;
  stateTitle();
  for (const section of document.querySelectorAll("section[data-state]")) {
    section.hidden = !section.dataset.state.split(" ").includes(name);
  }
  if (focus) {
    const target =
      document.querySelector(`section[data-state~="${name}"] [data-focus="${name}"]`) ||
      document.querySelector(`section[data-state~="${name}"] h2`);
    if (target) target.focus();
  }
}

// The window title carries the page's state, so that a ring or a call shows on a background
// tab: "Ringing — Volunteer — vabroker". The page's own title is its <title data-i18n> key.
const TITLES = {
  "signed-out": "title.signed-out",
  searching: "title.searching",
  ringing: "title.ringing",
  "in-call": "title.in-call",
  ended: "title.ended",
};

let untranslatedTitle = null;

export function stateTitle() {
  const own = document.querySelector("title");
  untranslatedTitle ??= document.title;
  const base = own && own.dataset.i18n ? t(own.dataset.i18n) : untranslatedTitle;
  const key = TITLES[document.body.dataset.state];
  document.title = key ? t(key, { page: base }) : base;
}

// The page in the person's language: first the one remembered from their profile on this
// device, else the browser's; after sign-in, the profile's (see profileLanguage).
export async function startLanguage(lang = null) {
  await useLanguage(lang);
  stateTitle();
}

// The signed-in user's profile (GET /v1/me/profile), or null; its languages choose the pages'.
export async function loadProfile(session) {
  const response = await session.api("/v1/me/profile").catch(() => null);
  if (!response || !response.ok) return null;
  const profile = await response.json().catch(() => null);
  const lang = fromProfile(profile);
  if (lang) {
    await useLanguage(lang, { remember: true });
    stateTitle();
  }
  return profile;
}

export function minutes(seconds) {
  return t("common.about-minutes", { count: Math.max(1, Math.round(seconds / 60)) });
}

// What a recipient hears when nobody answered their search (call.status "escalation").
export function escalationText(escalation) {
  let text;
  switch (escalation.outcome) {
    case "queued":
      return t("common.escalation.queued", { org: escalation.org_name || t("common.escalation.a-help-centre") });
    case "closed":
      text = t("common.escalation.closed");
      break;
    case "full":
      text = t("common.escalation.full");
      break;
    default:
      text = t("common.search.none-free");
  }
  if (!escalation.retry_after_s) return text;
  return `${text} ${t("common.escalation.retry", { when: minutes(escalation.retry_after_s) })}`;
}

// What a recipient hears as the search or the queue moves (call.status).
export function progressText(status) {
  const escalated = status.escalation ? escalationText(status.escalation) : "";
  if (status.state === "queued") {
    const place = status.position
      ? t("common.queue.position", { position: status.position })
      : t("common.queue.in");
    const where = status.eta_s
      ? t("common.queue.with-eta", { place, eta: minutes(status.eta_s) })
      : t("common.queue.sentence", { place });
    return escalated ? `${escalated} ${where}` : where;
  }
  if (escalated) return escalated;
  if (status.notified > 0) return t("common.search.ringing", { count: status.notified });
  return t("common.search.none-free");
}

// What to say about a new call.status, given the one before and the language asked for: the
// search widening to another language, a queue handing the call over to volunteers (its
// overflow), or simply its progress (a new count, a new place in the queue).
export function searchNews(status, before, requested) {
  const progress = progressText(status);
  if (before && before.state === "queued" && status.state === "searching") {
    return t("recipient.moved.to-volunteers", { progress });
  }
  const was = (before && before.language) || requested;
  if (status.state === "searching" && status.language && before && status.language !== was) {
    return t("recipient.moved.wider", { language: languageName(status.language), progress });
  }
  return progress;
}

// The call languages offered to a recipient: theirs first, then these.
export const LANGUAGES = ["en", "fr", "de", "es", "it", "nl", "pt", "pl", "ar", "zh", "ja", "hi"];

// Resolves with a token: from the fragment or this tab's storage, from a postMessage, or from
// the demo sign-in button (shown only when the broker runs in demo mode: the button asks, and
// the broker's answer says whether it does). ``problem`` says why a previous token failed.
export function signIn(role, problem = "") {
  const token = problem ? null : tokenFromLocation();
  if (token) return Promise.resolve(token);
  showState("signed-out");
  $("#sign-in-error").textContent = problem;
  announce(problem ? t("common.sign-in.with-problem", { problem }) : t("common.sign-in.please"));
  return new Promise((resolve) => {
    tokenFromMessage().then(resolve);
    const button = $("#demo-sign-in");
    // While the sign-in is pending the button stays focusable (aria-disabled, not disabled):
    // a disabled button drops keyboard focus to <body>, and the person loses their place.
    button.removeAttribute("aria-disabled");
    button.onclick = async () => {
      if (button.getAttribute("aria-disabled") === "true") return;
      button.setAttribute("aria-disabled", "true");
      announce(t("common.sign-in.pending"));
      try {
        resolve(await demoSignIn(role));
      } catch (err) {
        announce(err.message);
        $("#sign-in-error").textContent = err.message;
        button.removeAttribute("aria-disabled");
      }
    };
  });
}

const WRONG_ROLE = {
  recipient: "common.wrong-role.recipient",
  volunteer: "common.wrong-role.volunteer",
  agent: "common.wrong-role.agent",
};
const ROLE = {
  recipient: "common.role.recipient",
  volunteer: "common.role.volunteer",
  agent: "common.role.agent",
  admin: "common.role.admin",
};

// Signs in and opens the session, registering the page's handlers with ``register`` first.
// A refused token sends the person back to sign-in, saying why; a token for another role
// too. An unreachable broker is retried with the same token.
export async function startSession(role, register) {
  let problem = "";
  for (;;) {
    const token = await signIn(role, problem);
    // A fresh token for the same person may be posted by the deployment's sign-in page.
    const session = new Session(token, {
      onConnection: connectionNotice,
      tokenSource: tokenFromMessage,
    });
    register(session);
    try {
      const welcome = await session.connect();
      if (welcome.user.role === role) return session;
      session.close();
      const theirs = ROLE[welcome.user.role] ? t(ROLE[welcome.user.role]) : welcome.user.role;
      problem = t(WRONG_ROLE[role], { role: theirs });
    } catch (err) {
      if (err.code === "unauthenticated") {
        problem = err.message;
      } else {
        announce(t("common.trying-again", { problem: err.message }));
        await new Promise((wake) => setTimeout(wake, 2000));
        problem = "";
        sessionStorage.setItem("vabroker.token", token);
        continue;
      }
    }
    forgetToken();
  }
}

export function signOut() {
  forgetToken();
  location.reload();
}

let reconnecting = false;

export function connectionNotice(state) {
  if (state === "reconnecting") {
    if (!reconnecting) announce(t("common.connection.lost"));
    reconnecting = true;
  } else if (state === "open" && reconnecting) {
    reconnecting = false;
    announce(t("common.connection.back"));
  } else if (state === "signed-out") {
    // The token expired or the sign-in was revoked: start again at sign-in.
    forgetToken();
    location.reload();
  } else if (state === "replaced") {
    // Too many open sessions: this, the oldest, was closed. It stays closed (reconnecting
    // would close another) until the person reloads it.
    const text = t("common.connection.replaced");
    showState("signed-out");
    $("#sign-in-error").textContent = text;
    announce(text);
  }
}

// A restricted person hears why at sign-in, in the broker's own words (they include the end
// date of a suspension that has one). Empty when there is no restriction.
export function restrictionNotice(welcome) {
  const restriction = welcome && welcome.restriction;
  return restriction && typeof restriction.message === "string" ? ` ${restriction.message}` : "";
}

export function suspendedNotice() {
  return t("common.suspended");
}

// A switch button (role="switch") whose state is in its text, its aria-checked and its shape,
// never in colour alone: the visible "On"/"Off" is hidden from assistive technology, which
// hears the switch's own state instead.
export function setSwitch(button, on) {
  button.setAttribute("aria-checked", String(on));
  const state = button.querySelector(".switch-state");
  if (state) state.textContent = on ? t("common.switch.on") : t("common.switch.off");
}

export { translate };
