// The helper's side of a call, the same for a volunteer and an agent: the caller's video with
// our audio back, the relayed signals, hanging up, and tidying up when the call ends.
import { HelperTools, mountHelperTools, openToolsChannel } from "./calltools.js";
import { MediaCall, stopStream } from "./protocol.js";
import { $, announce, showState, t } from "./ui.js";

// `page` holds the session, the ring, the microphone stream, the call id and its media.
export function helperCall(page) {
  // The in-call tools (torch, camera, zoom, photo) under the caller's video.
  const toolsPanel = $("#call-tools")
    ? mountHelperTools($("#call-tools"), { getTools: () => page.tools, say: announce })
    : null;

  function onAssigned(assigned) {
    if (page.media) return;
    page.ring = null;
    page.callId = assigned.call;
    const name = assigned.peer.display_name || t("common.the-caller");
    showState("in-call");
    $("#call-detail").textContent = t("common.in-call.helping", { name });
    announce(t("common.in-call.connecting", { name }));
    page.media = new MediaCall(page.session, assigned, {
      localStream: page.mic,
      onRemoteTrack: (track, stream) => {
        const video = $("#remote-video");
        if (video.srcObject !== stream) video.srcObject = stream || new MediaStream([track]);
      },
      onMediaState: (state) => {
        if (state === "connected") announce(t("common.in-call.connected", { name }));
        else if (state === "failed") announce(t("common.in-call.failed"));
      },
    });
    page.tools = new HelperTools(openToolsChannel(page.media.pc));
    page.media.start();
  }

  // A relayed signal or signal.ack (numbered signals: docs/protocol.md).
  function onSignal(message) {
    if (page.media && message.call === page.callId) page.media.onSignal(message);
  }

  // Ends this page's side of the call; returns what to say about it (from `ended`, keyed by
  // reason), or null when the message is about another call.
  function endCall(message, ended) {
    if (message.call !== page.callId) return null;
    if (page.media) page.media.close();
    page.media = null;
    page.tools = null;
    if (toolsPanel) toolsPanel.reset();
    stopStream(page.mic);
    page.mic = null;
    page.callId = null;
    $("#remote-video").srcObject = null;
    const text = (ended[message.reason] || (() => t("common.ended.other")))(message.by);
    $("#ended-detail").textContent = text;
    return text;
  }

  // Asks the broker for a call (`call.accept` of a ring, `call.take` from the lobby) with the
  // microphone on for audio back; call.assigned, its answer, starts the call (onAssigned).
  // A refusal lets go of the microphone and is thrown for the caller to say.
  async function claim(message, working) {
    announce(working);
    try {
      page.mic = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    } catch (err) {
      announce(t("common.microphone-failed", { error: err.name }));
    }
    try {
      await page.session.request(message);
    } catch (err) {
      stopStream(page.mic);
      page.mic = null;
      throw err;
    }
  }

  // Accept the ring shown on the page. `conflict` is what to say when someone else answered
  // first.
  async function accept(working, conflict) {
    const ring = page.ring;
    if (!ring) return;
    try {
      await claim({ type: "call.accept", call: ring.call }, working);
    } catch (err) {
      page.ring = null;
      showState("idle");
      announce(err.code === "conflict" ? conflict : err.message);
    }
  }

  async function hangUp() {
    if (!page.callId) return;
    await page.session.request({ type: "call.end", call: page.callId }).catch((err) => {
      if (err.code !== "conflict") announce(err.message);
    });
  }

  return { onAssigned, onSignal, endCall, claim, accept, hangUp };
}
