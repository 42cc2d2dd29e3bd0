// In-call tools over the call's WebRTC data channel, peer to peer (the broker never sees them):
// the helper asks the recipient's phone for the torch, the other camera, zoom or a photo at the
// camera's full resolution. The wire format is in docs/protocol.md ("In-call tools"); its
// Python twin is clients/calltools.py.

import { currentLanguage, loaded, t, translate } from "./i18n.js";

export const TOOLS_LABEL = "vabroker-tools";
export const TOOLS_CHANNEL_ID = 0;
export const CHUNK_BYTES = 16 * 1024;
export const MAX_PHOTO_BYTES = 16 * 1024 * 1024;
export const DEFAULT_PHOTO_LIMIT = 8 * 1024 * 1024;
const MAX_TEXT_BYTES = 16384;
const MAX_READ_TEXT = 3000;
const TOOLS = ["torch", "camera", "zoom", "photo"];
const ERRORS = ["unsupported", "refused", "too_large", "failed", "bad_request", "busy"];
const PHOTO_TYPES = ["image/jpeg", "image/png", "image/webp"];
const ZOOM_RANGE = [1, 10];
const ALLOW_PHOTOS_KEY = "vabroker.allowPhotos";

// Both peers open the same negotiated channel before the offer and the answer.
export function openToolsChannel(pc) {
  const channel = pc.createDataChannel(TOOLS_LABEL, { negotiated: true, id: TOOLS_CHANNEL_ID });
  channel.binaryType = "arraybuffer";
  return channel;
}

// `message` is the protocol's text (English, sent to the other peer); `said` is what the person
// at this end hears, in the page's language.
export class ToolError extends Error {
  constructor(code, message, said = null) {
    super(message);
    this.code = code;
    this.said = said ?? message;
  }
}

const int = (v, lo, hi) => Number.isInteger(v) && v >= lo && v <= hi;

// A text message from the channel, checked field by field (the same rules as the Python side).
export function parseToolMessage(text) {
  if (new TextEncoder().encode(text).length > MAX_TEXT_BYTES) {
    throw new ToolError("bad_request", `a tools message is at most ${MAX_TEXT_BYTES} bytes`);
  }
  let m;
  try {
    m = JSON.parse(text);
  } catch {
    throw new ToolError("bad_request", "a tools message must be JSON");
  }
  const bad = (why) => new ToolError("bad_request", why);
  if (!m || typeof m !== "object" || Array.isArray(m) || typeof m.type !== "string") {
    throw bad("a tools message must be an object with a type");
  }
  if (typeof m.id !== "string" || m.id.length < 1 || m.id.length > 64) throw bad("id must be a string of 1 to 64 characters");
  if (m.type === "tool.request") {
    if (!TOOLS.includes(m.tool)) throw bad(`tool must be one of ${TOOLS.join(", ")}`);
    if (m.tool === "torch" && typeof m.on !== "boolean") throw bad("torch needs on: true or false");
    if (m.tool === "zoom" && !(Number.isFinite(m.level) && m.level >= ZOOM_RANGE[0] && m.level <= ZOOM_RANGE[1])) {
      throw bad(`zoom needs a level from ${ZOOM_RANGE[0]} to ${ZOOM_RANGE[1]}`);
    }
    if (m.tool === "photo" && m.max_bytes !== undefined && !int(m.max_bytes, 1, MAX_PHOTO_BYTES)) {
      throw bad(`max_bytes must be an integer from 1 to ${MAX_PHOTO_BYTES}`);
    }
  } else if (m.type === "tool.result") {
    const unnamed = m.ok === false && m.error === "bad_request" && m.tool === undefined;
    if (!TOOLS.includes(m.tool) && !unnamed) throw bad(`tool must be one of ${TOOLS.join(", ")}`);
    if (m.ok === false) {
      if (!ERRORS.includes(m.error)) throw bad(`error must be one of ${ERRORS.join(", ")}`);
      if (typeof m.message !== "string") throw bad("message must be a string");
    } else if (m.ok !== true) {
      throw bad("ok must be true or false");
    }
  } else if (m.type === "photo.begin") {
    if (!PHOTO_TYPES.includes(m.mime)) throw bad(`mime must be one of ${PHOTO_TYPES.join(", ")}`);
    if (!int(m.size, 1, MAX_PHOTO_BYTES)) throw bad(`size must be an integer from 1 to ${MAX_PHOTO_BYTES}`);
    if (!int(m.width, 1, 1 << 15) || !int(m.height, 1, 1 << 15)) throw bad("width and height must be positive integers");
    if (typeof m.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(m.sha256)) throw bad("sha256 must be 64 lowercase hex digits");
  } else if (m.type === "assistant.text") {
    if (typeof m.text !== "string" || m.text.length < 1 || m.text.length > MAX_READ_TEXT) {
      throw bad(`text must be a string of 1 to ${MAX_READ_TEXT} characters`);
    }
    if (typeof m.language !== "string" || m.language.length > 64) throw bad("language must be a language tag");
  } else {
    throw bad(`unknown tools message type "${m.type}"`);
  }
  return m;
}

export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const ASKED_FOR = {
  torch: "common.tools.notice.what-torch",
  camera: "common.tools.notice.what-camera",
  zoom: "common.tools.notice.what-zoom",
  photo: "common.tools.notice.what-photo",
};

// What the recipient hears when the helper uses a tool; `said` is the device's own explanation
// of a failure in the page's language (the result's message is the protocol's English text).
export function toolNotice(tool, request, result, said = null) {
  if (result.ok) {
    const state = result.state || {};
    if (tool === "torch") return t(state.torch ? "common.tools.notice.torch-on" : "common.tools.notice.torch-off");
    if (tool === "camera") return t("common.tools.notice.camera");
    if (tool === "zoom") return t("common.tools.notice.zoom", { level: state.zoom ?? request.level });
    return t("common.tools.notice.photo-sent");
  }
  const what = t(ASKED_FOR[tool] || "common.tools.notice.what-photo");
  const detail = said ?? result.message ?? "";
  if (result.error === "refused") return t("common.tools.notice.refused");
  if (result.error === "too_large") return t("common.tools.notice.too-large");
  if (result.error === "unsupported") return t("common.tools.notice.unsupported", { what, detail }).trim();
  return t("common.tools.notice.failed", { what, detail }).trim();
}

// --- the helper's end ---------------------------------------------------------------------------

export class HelperTools {
  constructor(channel, { photoLimit = DEFAULT_PHOTO_LIMIT } = {}) {
    this.channel = channel;
    this.photoLimit = photoLimit;
    this.nextId = 1;
    this.waiting = new Map();
    this.photos = new Map();
    this.incoming = null;
    channel.addEventListener("message", (event) => this.onMessage(event.data));
    channel.addEventListener("close", () => this.failAll(t("common.tools.helper.channel-closed")));
  }

  get open() {
    return this.channel.readyState === "open";
  }

  torch(on) {
    return this.ask("torch", { on });
  }

  switchCamera() {
    return this.ask("camera", {});
  }

  zoom(level) {
    return this.ask("zoom", { level });
  }

  // Resolves with {bytes, mime, width, height, sha256} once every byte arrived and checked.
  async photo(maxBytes = this.photoLimit) {
    const id = `p${this.nextId++}`;
    const arrived = new Promise((resolve, reject) => this.photos.set(id, { resolve, reject }));
    arrived.catch(() => {});
    try {
      await this.ask("photo", { max_bytes: Math.min(maxBytes, MAX_PHOTO_BYTES) }, id, 60000);
      return await arrived;
    } finally {
      this.photos.delete(id);
    }
  }

  ask(tool, args, id = `t${this.nextId++}`, timeoutMs = 15000) {
    if (!this.open) return Promise.reject(new ToolError("failed", t("common.tools.helper.not-connected")));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new ToolError("failed", t("common.tools.helper.no-answer")));
      }, timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
      this.channel.send(JSON.stringify({ type: "tool.request", id, tool, ...args }));
    });
  }

  onMessage(data) {
    if (typeof data !== "string") {
      this.onChunk(new Uint8Array(data));
      return;
    }
    let m;
    try {
      m = parseToolMessage(data);
    } catch (err) {
      console.warn("refused a tools message:", err.message);
      return;
    }
    if (m.type === "photo.begin") {
      const photo = this.photos.get(m.id);
      if (!photo) return;
      if (m.size > this.photoLimit) {
        photo.reject(new ToolError("too_large", t("common.tools.helper.too-large", { size: m.size, limit: this.photoLimit })));
        return;
      }
      this.incoming = { ...m, bytes: new Uint8Array(m.size), received: 0, photo };
    } else if (m.type === "tool.result") {
      const waiting = this.waiting.get(m.id);
      if (m.ok === false && this.photos.has(m.id)) this.photos.get(m.id).reject(new ToolError(m.error, m.message));
      if (!waiting) return;
      this.waiting.delete(m.id);
      clearTimeout(waiting.timer);
      if (m.ok) waiting.resolve(m.state || {});
      else waiting.reject(new ToolError(m.error, m.message));
    }
  }

  async onChunk(chunk) {
    const incoming = this.incoming;
    if (!incoming) return;
    if (incoming.received + chunk.length > incoming.size) {
      this.incoming = null;
      incoming.photo.reject(new ToolError("failed", t("common.tools.helper.damaged-size")));
      return;
    }
    incoming.bytes.set(chunk, incoming.received);
    incoming.received += chunk.length;
    if (incoming.received < incoming.size) return;
    this.incoming = null;
    const digest = await sha256Hex(incoming.bytes);
    if (digest !== incoming.sha256) {
      incoming.photo.reject(new ToolError("failed", t("common.tools.helper.damaged-digest")));
      return;
    }
    const { bytes, mime, width, height, sha256 } = incoming;
    incoming.photo.resolve({ bytes, mime, width, height, sha256 });
  }

  failAll(message) {
    for (const { reject, timer } of this.waiting.values()) {
      clearTimeout(timer);
      reject(new ToolError("failed", message));
    }
    this.waiting.clear();
    for (const { reject } of this.photos.values()) reject(new ToolError("failed", message));
  }
}

// --- the recipient's end ------------------------------------------------------------------------

export function photosAllowed() {
  return localStorage.getItem(ALLOW_PHOTOS_KEY) !== "no";
}

export function setPhotosAllowed(allowed) {
  localStorage.setItem(ALLOW_PHOTOS_KEY, allowed ? "yes" : "no");
}

// Answers the helper's requests with `device` (see cameraDevice) and says what happened.
export class RecipientTools {
  constructor(channel, device, { allowPhotos = photosAllowed, onNotice = () => {}, onText = null, photoLimit = DEFAULT_PHOTO_LIMIT } = {}) {
    this.channel = channel;
    // What an automatic reader read, as text (said in the live region unless onText is given).
    this.onText = onText || onNotice;
    this.texts = [];
    this.device = device;
    this.allowPhotos = allowPhotos;
    this.onNotice = onNotice;
    this.photoLimit = photoLimit;
    this.sent = [];
    channel.bufferedAmountLowThreshold = 4 * CHUNK_BYTES;
    channel.addEventListener("message", (event) => {
      if (typeof event.data === "string") this.onRequest(event.data);
    });
  }

  send(message) {
    if (this.channel.readyState === "open") this.channel.send(JSON.stringify(message));
  }

  async onRequest(text) {
    let request;
    try {
      request = parseToolMessage(text);
    } catch (err) {
      let loose = null;
      try {
        loose = JSON.parse(text);
      } catch {
        // not JSON: nothing to answer to
      }
      if (loose && loose.type === "tool.request" && typeof loose.id === "string" && loose.id.length <= 64) {
        const answer = { type: "tool.result", id: loose.id, ok: false, error: "bad_request", message: err.message };
        if (TOOLS.includes(loose.tool)) answer.tool = loose.tool;
        this.send(answer);
      }
      return;
    }
    if (request.type === "assistant.text") {
      this.texts.push(request.text);
      this.onText(request.text);
      return;
    }
    if (request.type !== "tool.request") return;
    let result;
    let said = null;
    try {
      let state;
      if (request.tool === "torch") state = await this.device.torch(request.on);
      else if (request.tool === "camera") state = await this.device.switchCamera();
      else if (request.tool === "zoom") state = await this.device.zoom(request.level);
      else state = await this.sendPhoto(request.id, request.max_bytes ?? DEFAULT_PHOTO_LIMIT);
      result = { ok: true, state };
    } catch (err) {
      const code = err instanceof ToolError ? err.code : "failed";
      const known = err instanceof ToolError;
      result = { ok: false, error: code, message: known ? err.message : `The device failed: ${err.message}` };
      said = known ? err.said : t("common.tools.device.failed", { error: err.message });
    }
    this.send({ type: "tool.result", id: request.id, tool: request.tool, ...result });
    this.onNotice(toolNotice(request.tool, request, result, said));
  }

  async sendPhoto(id, askedLimit) {
    if (!this.allowPhotos()) throw new ToolError("refused", "The recipient does not allow photos.");
    const photo = await this.device.photo();
    const limit = Math.min(askedLimit, this.photoLimit);
    if (photo.bytes.length > limit) {
      throw new ToolError("too_large", `The photo is ${photo.bytes.length} bytes, over the limit of ${limit}.`);
    }
    const sha256 = await sha256Hex(photo.bytes);
    this.send({ type: "photo.begin", id, mime: photo.mime, size: photo.bytes.length, width: photo.width, height: photo.height, sha256 });
    for (let at = 0; at < photo.bytes.length; at += CHUNK_BYTES) {
      if (this.channel.bufferedAmount > 8 * CHUNK_BYTES) {
        await new Promise((resume) => this.channel.addEventListener("bufferedamountlow", resume, { once: true }));
      }
      if (this.channel.readyState !== "open") throw new ToolError("failed", "The call ended while the photo was sent.", t("common.tools.device.ended"));
      this.channel.send(photo.bytes.slice(at, at + CHUNK_BYTES));
    }
    this.sent.push({ size: photo.bytes.length, width: photo.width, height: photo.height, sha256, mime: photo.mime });
    return { size: photo.bytes.length, width: photo.width, height: photo.height };
  }
}

// The recipient's camera as a device for the tools. `stream()` is the call's camera stream;
// `sender()` the peer connection's video sender (to swap in the other camera).
export function cameraDevice({ stream, sender }) {
  const track = () => {
    const video = stream() && stream().getVideoTracks()[0];
    if (!video || video.readyState !== "live") throw new ToolError("failed", "The camera is not running.", t("common.tools.device.not-running"));
    return video;
  };
  const caps = (video) => (typeof video.getCapabilities === "function" ? video.getCapabilities() : {});
  let facing = "environment";

  return {
    async torch(on) {
      const video = track();
      if (!("torch" in caps(video))) throw new ToolError("unsupported", "This camera has no torch.", t("common.tools.device.no-torch"));
      await video.applyConstraints({ advanced: [{ torch: on }] });
      return { torch: on };
    },

    async switchCamera() {
      const cameras = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
      if (cameras.length < 2) throw new ToolError("unsupported", "This device has only one camera.", t("common.tools.device.one-camera"));
      const old = track();
      const next = facing === "environment" ? "user" : "environment";
      const current = old.getSettings().deviceId;
      const other = cameras.find((d) => d.deviceId !== current);
      const fresh = await navigator.mediaDevices.getUserMedia({
        video: other ? { deviceId: { exact: other.deviceId } } : { facingMode: { exact: next } },
      });
      const newTrack = fresh.getVideoTracks()[0];
      newTrack.contentHint = "detail";
      const videoSender = sender();
      if (videoSender) await videoSender.replaceTrack(newTrack);
      stream().removeTrack(old);
      stream().addTrack(newTrack);
      old.stop();
      facing = next;
      return { facing };
    },

    async zoom(level) {
      const video = track();
      const range = caps(video).zoom;
      if (!range) throw new ToolError("unsupported", "This camera cannot zoom.", t("common.tools.device.no-zoom"));
      const zoom = Math.max(range.min, Math.min(range.max, level));
      await video.applyConstraints({ advanced: [{ zoom }] });
      return { zoom, min: range.min, max: range.max };
    },

    // The camera's full resolution: ImageCapture.takePhoto at the largest photo size it
    // offers; where that is not supported, or gives fewer pixels than the track can (some
    // cameras' photo mode is smaller than their video mode), the largest frame of the track.
    async photo() {
      const video = track();
      let best = null;
      if (typeof ImageCapture === "function") {
        const capture = new ImageCapture(video);
        try {
          const options = {};
          const pc = await capture.getPhotoCapabilities();
          if (pc.imageWidth && pc.imageWidth.max) options.imageWidth = pc.imageWidth.max;
          if (pc.imageHeight && pc.imageHeight.max) options.imageHeight = pc.imageHeight.max;
          best = await measured(await capture.takePhoto(options));
        } catch (err) {
          console.info("takePhoto is not supported here; using the largest frame:", err.name);
        }
      }
      const range = caps(video);
      const trackMax = range.width && range.height ? range.width.max * range.height.max : 0;
      if (!best || best.width * best.height < trackMax) {
        const frame = await measured(await largestFrame(video));
        if (!best || frame.width * frame.height > best.width * best.height) best = frame;
      }
      if (!PHOTO_TYPES.includes(best.blob.type)) throw new ToolError(
          "failed",
          `The camera gave an unusable photo (${best.blob.type}).`,
          t("common.tools.device.unusable", { type: best.blob.type }),
        );
      return { bytes: new Uint8Array(await best.blob.arrayBuffer()), mime: best.blob.type, width: best.width, height: best.height };
    },
  };
}

async function measured(blob) {
  const bitmap = await createImageBitmap(blob);
  const size = { blob, width: bitmap.width, height: bitmap.height };
  bitmap.close();
  return size;
}

// A still of the track at the largest size it offers: asks for its maximum width and height
// for a moment, grabs a frame, and puts the call's settings back.
async function largestFrame(track) {
  const before = track.getSettings();
  const caps = typeof track.getCapabilities === "function" ? track.getCapabilities() : {};
  const bigger = caps.width && caps.height && (caps.width.max > before.width || caps.height.max > before.height);
  if (bigger) {
    await track.applyConstraints({ width: { ideal: caps.width.max }, height: { ideal: caps.height.max } }).catch(() => {});
  }
  try {
    let bitmap;
    if (typeof ImageCapture === "function") {
      bitmap = await new ImageCapture(track).grabFrame();
    } else {
      const video = document.createElement("video");
      video.muted = true;
      video.srcObject = new MediaStream([track]);
      await video.play();
      bitmap = await createImageBitmap(video);
      video.srcObject = null;
    }
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    return await canvas.convertToBlob({ type: "image/jpeg", quality: 0.92 });
  } finally {
    if (bigger) await track.applyConstraints({ width: before.width, height: before.height }).catch(() => {});
  }
}

// --- the helper's controls and photo viewer --------------------------------------------------

// The English words stay in the element for a page whose catalog is not loaded yet (the tools
// are built when the page's module starts); data-i18n and data-i18n-attr translate them then.
function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

// A photo's size in pixels, in the page's digits but without grouping ("1920", not "1,920").
function pixels(n) {
  return new Intl.NumberFormat(currentLanguage(), { useGrouping: false }).format(n);
}

// An attribute translated with the page (the key stays a whole literal for the catalog test).
function i18nAttr(attr, key) {
  return `${attr}:${key}`;
}

// Builds the tools into `container` (empty until a call starts) and wires them to `tools` (a
// HelperTools or null between calls). `say` speaks through the page's live region.
export function mountHelperTools(container, { getTools, say }) {
  const heading = el("h3", { id: "h-tools", "data-i18n": "common.tools.heading" }, "Tools on the caller's phone");
  const group = el("div", { role: "group", "aria-labelledby": "h-tools", class: "tools" });
  const torch = el("button", { type: "button", id: "tool-torch", "aria-pressed": "false", "data-i18n": "common.tools.torch" }, "Torch");
  const camera = el("button", { type: "button", id: "tool-camera", "data-i18n": "common.tools.camera" }, "Switch camera");
  const zoomIn = el("button", { type: "button", id: "tool-zoom-in", "data-i18n": "common.tools.zoom-in" }, "Zoom in");
  const zoomOut = el("button", { type: "button", id: "tool-zoom-out", "data-i18n": "common.tools.zoom-out" }, "Zoom out");
  const photo = el("button", { type: "button", id: "tool-photo", "data-i18n": "common.tools.photo" }, "Take a photo");
  group.append(torch, camera, zoomIn, zoomOut, photo);

  const viewer = el("figure", { id: "photo-viewer", class: "photo-viewer" });
  viewer.hidden = true;
  const frame = el("div", {
    id: "photo-frame",
    class: "photo-frame",
    tabindex: "0",
    role: "region",
    "aria-label": "Photo from the caller. Arrow keys move it, plus and minus zoom, 0 shows all of it.",
    "data-i18n-attr": i18nAttr("aria-label", "common.tools.viewer.frame"),
  });
  const image = el("img", {
    id: "photo-image",
    alt: "Photo from the caller's camera",
    "data-i18n-attr": i18nAttr("alt", "common.tools.viewer.image"),
  });
  frame.append(image);
  const caption = el("figcaption", { id: "photo-caption" });
  const controls = el("div", { role: "group", "aria-label": "Photo view", "data-i18n-attr": i18nAttr("aria-label", "common.tools.viewer.controls") });
  const photoIn = el("button", { type: "button", id: "photo-zoom-in", "data-i18n": "common.tools.viewer.zoom-in" }, "Zoom photo in");
  const photoOut = el("button", { type: "button", id: "photo-zoom-out", "data-i18n": "common.tools.viewer.zoom-out" }, "Zoom photo out");
  const reset = el("button", { type: "button", id: "photo-reset", "data-i18n": "common.tools.viewer.reset" }, "Show all of the photo");
  const save = el(
    "a",
    { id: "photo-save", class: "button", download: "photo.jpg", href: "#", "data-i18n": "common.tools.viewer.save" },
    "Save photo",
  );
  controls.append(photoIn, photoOut, reset, save);
  viewer.append(frame, caption, controls);
  container.replaceChildren(heading, group, viewer);
  if (loaded()) translate(container);

  const view = { scale: 1, x: 0, y: 0 };
  let zoomLevel = 1;

  function draw() {
    image.style.transform = `translate(${view.x}%, ${view.y}%) scale(${view.scale})`;
    frame.dataset.scale = String(view.scale);
    frame.dataset.pan = `${view.x},${view.y}`;
  }
  function zoomPhoto(factor) {
    view.scale = Math.max(1, Math.min(8, view.scale * factor));
    const limit = ((view.scale - 1) / 2) * 100;
    view.x = Math.max(-limit, Math.min(limit, view.x));
    view.y = Math.max(-limit, Math.min(limit, view.y));
    draw();
  }
  function pan(dx, dy) {
    const limit = ((view.scale - 1) / 2) * 100;
    view.x = Math.max(-limit, Math.min(limit, view.x + dx));
    view.y = Math.max(-limit, Math.min(limit, view.y + dy));
    draw();
  }
  function resetView() {
    view.scale = 1;
    view.x = 0;
    view.y = 0;
    draw();
  }

  frame.addEventListener("keydown", (event) => {
    const step = 10;
    const keys = {
      ArrowLeft: () => pan(step, 0),
      ArrowRight: () => pan(-step, 0),
      ArrowUp: () => pan(0, step),
      ArrowDown: () => pan(0, -step),
      "+": () => zoomPhoto(1.5),
      "=": () => zoomPhoto(1.5),
      "-": () => zoomPhoto(1 / 1.5),
      0: resetView,
    };
    const action = keys[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  });
  let drag = null;
  frame.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY };
    frame.setPointerCapture(event.pointerId);
  });
  frame.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const box = frame.getBoundingClientRect();
    pan(((event.clientX - drag.x) / box.width) * 100, ((event.clientY - drag.y) / box.height) * 100);
    drag = { x: event.clientX, y: event.clientY };
  });
  frame.addEventListener("pointerup", () => {
    drag = null;
  });
  frame.addEventListener("wheel", (event) => {
    event.preventDefault();
    zoomPhoto(event.deltaY < 0 ? 1.25 : 0.8);
  });
  photoIn.addEventListener("click", () => zoomPhoto(1.5));
  photoOut.addEventListener("click", () => zoomPhoto(1 / 1.5));
  reset.addEventListener("click", resetView);

  async function use(action, describe) {
    const tools = getTools();
    if (!tools) return;
    try {
      say(describe(await action(tools)));
    } catch (err) {
      say(err.code === "unsupported" ? t("common.tools.unsupported", { message: err.message }) : err.said);
    }
  }

  torch.addEventListener("click", () => {
    const on = torch.getAttribute("aria-pressed") !== "true";
    use(
      (tools) => tools.torch(on),
      (state) => {
        torch.setAttribute("aria-pressed", String(Boolean(state.torch)));
        return t(state.torch ? "common.tools.torch-on" : "common.tools.torch-off");
      },
    );
  });
  camera.addEventListener("click", () =>
    use((tools) => tools.switchCamera(), () => t("common.tools.camera-switched")),
  );
  const zoomBy = (factor) =>
    use(
      (tools) => tools.zoom(Math.max(ZOOM_RANGE[0], Math.min(ZOOM_RANGE[1], zoomLevel * factor))),
      (state) => {
        zoomLevel = state.zoom;
        return t("common.tools.zoomed", { level: state.zoom });
      },
    );
  zoomIn.addEventListener("click", () => zoomBy(2));
  zoomOut.addEventListener("click", () => zoomBy(0.5));
  photo.addEventListener("click", () => {
    say(t("common.tools.photo-asking"));
    use(
      (tools) => tools.photo(),
      (got) => {
        show(got);
        return t("common.tools.photo-received", { width: pixels(got.width), height: pixels(got.height) });
      },
    );
  });

  function show(got) {
    // A data: URL: the pages' content security policy allows images from data: only.
    let binary = "";
    for (let i = 0; i < got.bytes.length; i += 0x8000) {
      binary += String.fromCharCode(...got.bytes.subarray(i, i + 0x8000));
    }
    const url = `data:${got.mime};base64,${btoa(binary)}`;
    image.src = url;
    save.href = url;
    save.download = `photo.${got.mime.split("/")[1].replace("jpeg", "jpg")}`;
    caption.textContent = t("common.tools.viewer.caption", { width: pixels(got.width), height: pixels(got.height) });
    frame.dataset.sha256 = got.sha256;
    frame.dataset.size = `${got.width}x${got.height}`;
    viewer.hidden = false;
    resetView();
  }

  // Between calls: the torch button starts off again and the last photo is hidden.
  function reset_() {
    torch.setAttribute("aria-pressed", "false");
    zoomLevel = 1;
    viewer.hidden = true;
    image.removeAttribute("src");
    save.href = "#";
    caption.textContent = "";
  }
  return { reset: reset_ };
}
