// Sounds the pages make: the caller's ringback while the search goes on, and the volunteer's ring.
// Made with Web Audio (no sound files), quiet, and each with an off switch the person controls;
// the choice is remembered on this device.
//
// A pattern is a list of [frequencies in Hz, seconds on, seconds off], repeated until stop().

// North American ringback: 440 + 480 Hz, 2 s on, 4 s off. Familiar as "it is ringing".
export const RINGBACK = [[[440, 480], 2, 4]];
// A ring that cuts through in a background tab: two short bursts, then a pause.
export const RING = [
  [[660, 880], 0.4, 0.2],
  [[660, 880], 0.4, 2.0],
];

let shared = null;

// One AudioContext for the page, made (or resumed) on a click: browsers only let a page make
// sound after the person has interacted with it.
export function unlockAudio() {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return null;
  if (!shared) shared = new Context();
  if (shared.state === "suspended") shared.resume().catch(() => {});
  return shared;
}

export class Tone {
  constructor(pattern, { storageKey, gain = 0.08 } = {}) {
    this.pattern = pattern;
    this.storageKey = storageKey;
    this.gain = gain;
    this.playing = false; // wanted now (a ring, a search), whether or not it is muted
    this.sounding = false; // making sound now
    this.timer = null;
    this.step = 0;
  }

  get enabled() {
    return localStorage.getItem(this.storageKey) !== "off";
  }

  set enabled(on) {
    localStorage.setItem(this.storageKey, on ? "on" : "off");
    if (!on) this.silence();
    else if (this.playing) this.loop();
  }

  start() {
    this.playing = true;
    this.step = 0;
    if (this.enabled) this.loop();
  }

  stop() {
    this.playing = false;
    this.silence();
  }

  silence() {
    clearTimeout(this.timer);
    this.timer = null;
    this.sounding = false;
    for (const node of this.nodes || []) {
      try {
        node.stop();
      } catch {
        // already stopped at the end of its beep
      }
    }
    this.nodes = null;
  }

  loop() {
    this.silence();
    this.sounding = true;
    const [freqs, on, off] = this.pattern[this.step % this.pattern.length];
    this.step += 1;
    this.beep(freqs, on);
    this.timer = setTimeout(() => this.loop(), (on + off) * 1000);
  }

  beep(freqs, seconds) {
    const ctx = unlockAudio();
    if (!ctx) return;
    const volume = ctx.createGain();
    volume.gain.value = this.gain / freqs.length;
    volume.connect(ctx.destination);
    this.nodes = freqs.map((f) => {
      const osc = ctx.createOscillator();
      osc.frequency.value = f;
      osc.connect(volume);
      osc.start();
      osc.stop(ctx.currentTime + seconds);
      return osc;
    });
  }
}
