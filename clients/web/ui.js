// What the three pages share on screen: the live region, switching between a page's states,
// moving focus, and signing in.

import { Session, demoSignIn, forgetToken, tokenFromLocation, tokenFromMessage } from "./protocol.js";

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

export function minutes(seconds) {
  const m = Math.max(1, Math.round(seconds / 60));
  return m === 1 ? "about 1 minute" : `about ${m} minutes`;
}

// What a recipient hears when nobody answered their search (call.status "escalation").
export function escalationText(escalation) {
  const later = escalation.retry_after_s
    ? ` If no one answers, please try again in ${minutes(escalation.retry_after_s)}.`
    : "";
  switch (escalation.outcome) {
    case "queued":
      return `No volunteer could answer, so your call has gone to ${escalation.org_name || "a help centre"}.`;
    case "closed":
      return `No volunteer is free just now and the help centre is closed. Still looking…${later}`;
    case "full":
      return `No volunteer is free just now and the help centre is busy. Still looking…${later}`;
    default:
      return `No volunteer is free just now. Still looking…${later}`;
  }
}

// What a recipient hears as the search or the queue moves (call.status).
export function progressText(status) {
  const escalated = status.escalation ? escalationText(status.escalation) : "";
  if (status.state === "queued") {
    const place = status.position ? `You are number ${status.position} in the queue` : "You are in the queue";
    const where = status.eta_s ? `${place}, ${minutes(status.eta_s)}.` : `${place}.`;
    return escalated ? `${escalated} ${where}` : where;
  }
  if (escalated) return escalated;
  if (status.notified > 0) {
    const who = status.notified === 1 ? "1 volunteer" : `${status.notified} volunteers`;
    return `Ringing ${who}.`;
  }
  return "No volunteer is free just now. Still looking…";
}

export const LANGUAGES = {
  en: "English",
  fr: "French",
  de: "German",
  es: "Spanish",
  it: "Italian",
  nl: "Dutch",
  pt: "Portuguese",
  pl: "Polish",
  ar: "Arabic",
  zh: "Chinese",
  ja: "Japanese",
  hi: "Hindi",
};

export function languageName(tag) {
  const primary = String(tag).split("-")[0].toLowerCase();
  return LANGUAGES[primary] || tag;
}

// Resolves with a token: from the fragment or this tab's storage, from a postMessage, or from
// the demo sign-in button (shown only when the broker runs in demo mode: the button asks, and
// the broker's answer says whether it does). ``problem`` says why a previous token failed.
export function signIn(role, problem = "") {
  const token = problem ? null : tokenFromLocation();
  if (token) return Promise.resolve(token);
  showState("signed-out");
  $("#sign-in-error").textContent = problem;
  announce(problem ? `Please sign in. ${problem}` : "Please sign in.");
  return new Promise((resolve) => {
    tokenFromMessage().then(resolve);
    const button = $("#demo-sign-in");
    button.disabled = false;
    button.onclick = async () => {
      button.disabled = true;
      try {
        resolve(await demoSignIn(role));
      } catch (err) {
        announce(err.message);
        $("#sign-in-error").textContent = err.message;
        button.disabled = false;
      }
    };
  });
}

const ROLE_NAMES = { recipient: "recipients", volunteer: "volunteers", agent: "agents" };

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
      problem = `This page is for ${ROLE_NAMES[role]}, and you signed in as a ${welcome.user.role}.`;
    } catch (err) {
      if (err.code === "unauthenticated") {
        problem = err.message;
      } else {
        announce(`${err.message} Trying again…`);
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
    if (!reconnecting) announce("Connection lost. Reconnecting…");
    reconnecting = true;
  } else if (state === "open" && reconnecting) {
    reconnecting = false;
    announce("Reconnected.");
  } else if (state === "signed-out") {
    // The token expired or the sign-in was revoked: start again at sign-in.
    forgetToken();
    location.reload();
  } else if (state === "replaced") {
    // Too many open sessions: this, the oldest, was closed. It stays closed (reconnecting
    // would close another) until the person reloads it.
    const text =
      "This page was closed because you opened the service in another tab or device. " +
      "Reload to use it here.";
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

export const SUSPENDED_NOTICE = "Your account is suspended while our team reviews reports about a call.";
