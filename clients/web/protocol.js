// Protocol v1 for the browser pages: sign-in, the WebSocket session, typed server messages,
// and the WebRTC side of a call. The Python models in signaling/messages.py are the one
// definition of the wire format; this module checks every server message against the same
// fields so that a page never acts on a malformed one.

export const CLIENT = "vabroker-web/0.1";

// --- sign-in --------------------------------------------------------------------------------

const TOKEN_KEY = "vabroker.token";

// A token arrives in the URL fragment (#token=...) or by postMessage from the deployment's
// sign-in page; never in a query string, which servers and proxies log. It is kept for this
// tab only (sessionStorage), and the fragment is wiped at once so that it is not bookmarked.
export function tokenFromLocation() {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = fragment.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname);
    return token;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// Resolves with a token posted as {type: "vabroker.token", token} by a window of this origin.
export function tokenFromMessage() {
  return new Promise((resolve) => {
    const listener = (event) => {
      if (event.origin !== location.origin) return;
      const data = event.data;
      if (data && data.type === "vabroker.token" && typeof data.token === "string" && data.token) {
        removeEventListener("message", listener);
        sessionStorage.setItem(TOKEN_KEY, data.token);
        resolve(data.token);
      }
    };
    addEventListener("message", listener);
  });
}

// Demo mode only (vabroker serve --demo): the broker mints a token for a new demo user.
export async function demoSignIn(role, extra = {}) {
  const response = await fetch("/v1/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ role, ...extra }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ProtocolError(body.error || "unavailable", body.message || "Demo sign-in failed.");
  }
  sessionStorage.setItem(TOKEN_KEY, body.token);
  return body.token;
}

// --- errors and message checking ------------------------------------------------------------

export class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const str = (v) => typeof v === "string";
const optStr = (v) => v === undefined || v === null || typeof v === "string";
const num = (v) => typeof v === "number" && Number.isFinite(v);
const optNum = (v) => v === undefined || v === null || num(v);
const obj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const bool = (v) => typeof v === "boolean";
const optBool = (v) => v === undefined || v === null || typeof v === "boolean";
const optObj = (v) => v === undefined || v === null || obj(v);

// The lobby's requests (docs/protocol.md, "Lobby"): each checked, so that a bad one is never
// shown with a Take button.
const lobbyEntries = (v) =>
  Array.isArray(v) &&
  v.every(
    (e) =>
      obj(e) &&
      str(e.call) &&
      str(e.language) &&
      optStr(e.topic) &&
      num(e.waiting_s) &&
      e.waiting_s >= 0 &&
      num(e.requested_at),
  );
const count = (v) => Number.isInteger(v) && v >= 0;

// Required and optional fields of every server message (signaling/messages.py).
const SERVER_MESSAGES = {
  welcome: {
    user: obj,
    session: str,
    resume: str,
    heartbeat_s: num,
    ice_servers: Array.isArray,
    expires_at: optNum,
  },
  error: { code: str, message: str },
  pong: {},
  ack: {},
  availability: { available: bool },
  "agent.status": { state: str },
  "call.status": {
    call: str,
    state: str,
    notified: optNum,
    position: optNum,
    eta_s: optNum,
    escalation: optObj,
    replaces: optStr,
  },
  "call.ring": {
    call: str,
    language: str,
    topic: optStr,
    note: optStr,
    org: optStr,
    queue: optStr,
    requester: obj,
    expires_in_s: num,
    reading: optStr,
  },
  "call.withdrawn": { call: str, reason: str },
  "call.assigned": { call: str, peer: obj, ice_servers: Array.isArray, offerer: bool, reading: optStr },
  signal: { call: str, data: obj, seq: optNum },
  // Numbered signals: the peer has every signal of ours up to seq (docs/protocol.md).
  "signal.ack": { call: str, seq: num },
  "call.ended": { call: str, reason: str, by: optStr, retry_after_s: optNum },
  reconnect: { after_s: optNum },
  // The sign-in: the token expires soon (send auth.refresh), and the answer to auth.refresh.
  "auth.expiring": { expires_at: num, expires_in_s: num },
  "auth.refreshed": { expires_at: num },
  // Partner queues: the live queue of an agent's organisation.
  "queue.update": {},
  // The volunteer's lobby: the whole list of requests waiting, each time it changes.
  // The broker closed it by itself: closed true, with reason off_duty, suspended or in_call.
  lobby: { entries: lobbyEntries, more: count, closed: optBool, reason: optStr },
};

export function parseServer(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    throw new ProtocolError("bad_message", "The broker sent something that is not JSON.");
  }
  if (!obj(message) || !str(message.type)) {
    throw new ProtocolError("bad_message", "The broker sent a message without a type.");
  }
  const fields = SERVER_MESSAGES[message.type];
  if (!fields) return message; // a newer broker's message: ignored by the pages
  for (const [name, check] of Object.entries(fields)) {
    if (!check(message[name])) {
      throw new ProtocolError("bad_message", `The broker's ${message.type} has a bad ${name}.`);
    }
  }
  return message;
}

// --- the session ----------------------------------------------------------------------------

export function brokerUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v1/ws`;
}

// Close codes of the sign-in (docs/protocol.md): the token expired or was refused; the
// sign-in was revoked; the same person opened a newer session, which took this one's place.
export const CLOSE_UNAUTHENTICATED = 4401;
export const CLOSE_REVOKED = 4403;
export const CLOSE_REPLACED = 4409;

// One signed-in WebSocket session. Server messages are dispatched by type to handlers added
// with on(type, fn); answers to requests (same ref) resolve request()'s promise instead of
// going to the handlers (an error answer rejects it). A dropped connection is resumed with the
// token from welcome, so a call survives a brief network loss. ``tokenSource`` (optional)
// resolves with a fresh token for the same person: asked when the broker warns that the token
// expires soon (auth.expiring), and sent with auth.refresh so that the session carries on.
export class Session {
  constructor(token, { url = brokerUrl(), onConnection = () => {}, tokenSource = null } = {}) {
    this.token = token;
    this.url = url;
    this.onConnection = onConnection;
    this.tokenSource = tokenSource;
    this.refreshing = false;
    this.handlers = new Map();
    this.pending = new Map();
    this.nextRef = 1;
    this.resumeToken = null;
    this.welcome = null;
    this.closedByUs = false;
    this.ws = null;
    this.retries = 0;
    this.reconnectAfterS = null;
    // Told to reconnect: read on until the node closes, but send nothing more on this socket.
    this.draining = false;
    // Called with welcome after each resume (a call sends again what its peer may have missed).
    this.onResumed = new Set();
    // A phone that slept may hold a socket that is dead without knowing it: when the page is
    // shown again, a ping that goes unanswered for 5 s closes it, and the session resumes.
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState !== "visible" || !this.ws) return;
      if (this.ws.readyState !== WebSocket.OPEN) return;
      const ws = this.ws;
      this.ping(5000).catch(() => {
        if (this.ws === ws && !this.closedByUs) ws.close(3001);
      });
    });
  }

  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
    return this;
  }

  // Resolves with welcome; rejects with a ProtocolError if the token is refused.
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      this.draining = false;
      let welcomed = false;
      ws.onopen = () => {
        const hello = { type: "hello", token: this.token, client: CLIENT };
        if (this.resumeToken) hello.resume = this.resumeToken;
        ws.send(JSON.stringify(hello));
      };
      ws.onmessage = (event) => {
        let message;
        try {
          message = parseServer(event.data);
        } catch (err) {
          console.warn(err.message);
          return;
        }
        if (!welcomed) {
          if (message.type === "welcome") {
            welcomed = true;
            const resumed = this.welcome !== null && message.session === this.welcome.session;
            this.retries = 0;
            this.welcome = message;
            this.resumeToken = message.resume;
            this.onConnection("open");
            resolve(message);
            if (resumed) for (const hook of [...this.onResumed]) hook(message);
          } else if (message.type === "error") {
            reject(new ProtocolError(message.code, message.message));
          }
          return;
        }
        this.dispatch(message);
      };
      ws.onclose = (event) => {
        for (const { reject: fail } of this.pending.values()) {
          fail(new ProtocolError("unavailable", "The connection to the service was lost."));
        }
        this.pending.clear();
        if (!welcomed) {
          if (event.code !== 4401) {
            reject(new ProtocolError("unavailable", "Could not reach the service."));
          }
          return;
        }
        if (this.closedByUs) return;
        if (event.code === CLOSE_UNAUTHENTICATED || event.code === CLOSE_REVOKED) {
          this.onConnection("signed-out");
          return;
        }
        if (event.code === CLOSE_REPLACED) {
          // Never reconnect by itself: two tabs would take each other's place for ever.
          this.onConnection("replaced");
          return;
        }
        const afterS = this.reconnectAfterS ?? 0.5;
        this.reconnectAfterS = null;
        this.reconnect(Math.max(afterS, 0.1));
      };
    });
  }

  reconnect(afterS) {
    this.onConnection("reconnecting");
    const delay = Math.min(10, afterS * 2 ** this.retries) * 1000;
    this.retries += 1;
    setTimeout(() => {
      this.connect().catch((err) => {
        if (err.code === "unauthenticated") this.onConnection("signed-out");
        else this.reconnect(1);
      });
    }, delay);
  }

  dispatch(message) {
    if (message.ref && this.pending.has(message.ref)) {
      const { resolve, reject } = this.pending.get(message.ref);
      this.pending.delete(message.ref);
      if (message.type === "error") reject(new ProtocolError(message.code, message.message));
      else resolve(message);
      // An answer that is also an event (call.assigned, call.ended) still updates the page.
      if (message.type === "error" || message.type === "ack" || message.type === "pong") return;
    }
    if (message.type === "auth.expiring") this.refreshToken(message.expires_in_s);
    if (message.type === "reconnect") {
      // The broker node is going away: come back (to another node) after after_s and resume.
      // Read on until the node closes: it still relays what this page wrote before hearing
      // this (docs/protocol.md, "Shutdown"); close it ourselves only if the node does not.
      this.reconnectAfterS = message.after_s || 0;
      this.draining = true;
      const ws = this.ws;
      setTimeout(() => {
        if (this.ws === ws && ws.readyState === WebSocket.OPEN) ws.close(1000);
      }, 2000);
      return;
    }
    for (const handler of this.handlers.get(message.type) || []) handler(message);
  }

  send(message) {
    if (this.ws && !this.draining && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  request(message, timeoutMs = 10000) {
    const ref = `w${this.nextRef++}`;
    return new Promise((resolve, reject) => {
      if (!this.ws || this.draining || this.ws.readyState !== WebSocket.OPEN) {
        reject(new ProtocolError("unavailable", "Not connected to the service."));
        return;
      }
      this.pending.set(ref, { resolve, reject });
      setTimeout(() => {
        if (this.pending.delete(ref)) {
          reject(new ProtocolError("unavailable", "The service did not answer in time."));
        }
      }, timeoutMs);
      this.ws.send(JSON.stringify({ ...message, ref }));
    });
  }

  // Asks the token source for a fresh token and sends it before the current one expires.
  // A refused or missing token changes nothing: the session ends when the old token does.
  async refreshToken(withinS) {
    if (!this.tokenSource || this.refreshing) return;
    this.refreshing = true;
    try {
      const timeout = new Promise((resolve) => setTimeout(() => resolve(null), withinS * 1000));
      const token = await Promise.race([this.tokenSource(), timeout]);
      if (typeof token !== "string" || !token) return;
      await this.request({ type: "auth.refresh", token });
      this.token = token;
    } catch (err) {
      console.warn("the token was not refreshed:", err.message);
    } finally {
      this.refreshing = false;
    }
  }

  ping(timeoutMs = 10000) {
    return this.request({ type: "ping" }, timeoutMs);
  }

  close() {
    this.closedByUs = true;
    if (this.ws) this.ws.close(1000);
  }

  // The HTTP API with this session's token.
  async api(path, { method = "GET", body, accept = "application/json" } = {}) {
    const headers = { Authorization: `Bearer ${this.token}`, Accept: accept };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return response;
  }
}

// --- numbered signals ---------------------------------------------------------------------

// One call's signals numbered and acknowledged end to end (docs/protocol.md, "Numbered
// signals"; the SDK's clients/signals.py is the same bookkeeping): a broker node killed
// mid-call loses none, and none is taken twice. No I/O: the caller sends what it returns.
export class SignalLink {
  constructor(call, { resendAfterS = 1, hold = 1000, joinedLate = false } = {}) {
    this.call = call;
    this.resendAfterS = resendAfterS;
    this.hold = hold;
    this.numbered = !joinedLate; // joined late (a reload resuming the call): count unknown
    this.findPlace = joinedLate;
    this.peerAcknowledges = false;
    this.received = 0;
    this.copies = 0;
    this.sentAgain = 0;
    this.sent = 0;
    this.unacked = new Map(); // seq -> { message, at }, in seq order
    this.early = new Map(); // arrived ahead of a gap: seq -> data
    this.ackOwed = false;
  }

  send(data, now) {
    if (!this.numbered) return { type: "signal", call: this.call, data };
    this.sent += 1;
    const message = { type: "signal", call: this.call, seq: this.sent, data };
    this.unacked.set(this.sent, { message, at: now });
    return message;
  }

  acknowledged(seq) {
    this.peerAcknowledges = true;
    for (const sent of [...this.unacked.keys()]) {
      if (sent > seq) break;
      this.unacked.delete(sent);
    }
  }

  // Not acknowledged for resendAfterS (or everything, after a resume); nothing before the
  // peer said it acknowledges: a client that ignores seq would take a copy as a new signal.
  due(now, everything = false) {
    if (!this.peerAcknowledges) return [];
    const again = [];
    for (const entry of this.unacked.values()) {
      if (everything || now - entry.at >= this.resendAfterS) {
        entry.at = now;
        again.push(entry.message);
      }
    }
    this.sentAgain += again.length;
    return again;
  }

  // A numbered signal arrived: the data to hand on now, once and in order.
  receive(seq, data) {
    this.ackOwed = true;
    if (this.findPlace) {
      this.findPlace = false;
      this.received = seq - 1;
    }
    if (seq <= this.received || this.early.has(seq)) {
      this.copies += 1;
      return [];
    }
    this.early.set(seq, data);
    if (this.early.size > this.hold) this.received = Math.min(...this.early.keys()) - 1;
    const ready = [];
    while (this.early.has(this.received + 1)) {
      this.received += 1;
      ready.push(this.early.get(this.received));
      this.early.delete(this.received);
    }
    return ready;
  }

  ack() {
    return this.ackOwed ? this.acknowledgement() : null;
  }

  acknowledgement() {
    this.ackOwed = false;
    return { type: "signal.ack", call: this.call, seq: this.received };
  }
}

// --- media ----------------------------------------------------------------------------------

// The WebRTC side of an assigned call. The recipient offers (video and audio from its camera);
// the helper answers with its microphone. Candidates are trickled as signal messages; those that
// arrive before the remote description are held until it is set.
export class MediaCall {
  constructor(session, assigned, { localStream, onRemoteTrack, onMediaState }) {
    this.session = session;
    this.callId = assigned.call;
    this.offerer = assigned.offerer;
    this.localStream = localStream;
    this.onMediaState = onMediaState || (() => {});
    this.heldCandidates = [];
    this.reported = false;
    // Signals numbered and acknowledged end to end; handed on one after another, in order.
    this.link = new SignalLink(assigned.call, { joinedLate: assigned.resumed === true });
    this.handling = Promise.resolve();
    // seq 0: this page acknowledges numbered signals (and has none yet).
    if (this.link.numbered) session.send(this.link.acknowledgement());
    this.linkTimer = setInterval(() => {
      const ack = this.link.ack();
      if (ack) session.send(ack);
      for (const message of this.link.due(performance.now() / 1000)) session.send(message);
    }, 50);
    this.resumed = () => {
      if (!this.link.numbered) return;
      const again = this.link.due(performance.now() / 1000, true);
      for (const message of [this.link.acknowledgement(), ...again]) session.send(message);
    };
    session.onResumed.add(this.resumed);
    this.pc = new RTCPeerConnection({ iceServers: assigned.ice_servers || [] });
    this.pc.ontrack = (event) => onRemoteTrack(event.track, event.streams[0]);
    this.pc.onicecandidate = (event) => {
      this.signal({ candidate: event.candidate ? event.candidate.toJSON() : null });
    };
    this.pc.onconnectionstatechange = () => {
      const state = this.pc.connectionState;
      if (state === "connected" && !this.reported) {
        this.reported = true;
        this.session.send({ type: "call.media", call: this.callId, state: "connected" });
      } else if (state === "failed") {
        this.session.send({ type: "call.media", call: this.callId, state: "failed" });
      }
      this.onMediaState(state);
    };
  }

  signal(data) {
    // Sent while the connection is down, it is kept by the link and sent again after the resume.
    this.session.send(this.link.send(data, performance.now() / 1000));
  }

  // A relayed signal (numbered: once and in order) or signal.ack for this call.
  onSignal(message) {
    if (message.call !== this.callId) return;
    if (message.type === "signal.ack") {
      this.link.acknowledged(message.seq);
      return;
    }
    const ready = message.seq === undefined ? [message.data] : this.link.receive(message.seq, message.data);
    for (const data of ready) {
      this.handling = this.handling.then(() => this.handleSignal(data)).catch((err) => console.warn(err));
    }
  }

  async start() {
    if (!this.offerer) return; // the answerer waits for the offer
    for (const track of this.localStream ? this.localStream.getTracks() : []) {
      // The volunteer reads labels and screens: under load keep the resolution, drop frames.
      if (track.kind === "video") track.contentHint = "detail";
      this.pc.addTrack(track, this.localStream);
    }
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    this.signal({ sdp: { type: offer.type, sdp: offer.sdp } });
  }

  async handleSignal(data) {
    if (this.pc.signalingState === "closed") return;
    if (data.sdp) {
      await this.pc.setRemoteDescription(data.sdp);
      if (data.sdp.type === "offer") {
        for (const track of this.localStream ? this.localStream.getTracks() : []) {
          this.pc.addTrack(track, this.localStream);
        }
        const answer = await this.pc.createAnswer();
        await this.pc.setLocalDescription(answer);
        this.signal({ sdp: { type: answer.type, sdp: answer.sdp } });
      }
      for (const candidate of this.heldCandidates.splice(0)) await this.addCandidate(candidate);
    } else if ("candidate" in data) {
      if (!this.pc.remoteDescription) this.heldCandidates.push(data.candidate);
      else await this.addCandidate(data.candidate);
    }
  }

  async addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate || undefined);
    } catch (err) {
      console.warn("ignored a remote candidate:", err.message);
    }
  }

  close() {
    clearInterval(this.linkTimer);
    this.session.onResumed.delete(this.resumed);
    this.pc.close();
  }
}

export function stopStream(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}
