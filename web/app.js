// The `pipe serve` page: runs the cached grid model on the webcam stream, frame by frame.
// Plain browser module, no build step. `tf` is the global from /tf.min.js; the decoding is the
// same code training and evaluation use (dist/stages/lib/grid-layout.js, served as /lib/…).
import { CH, CHANNELS, detect, letterboxGeometry, sigmoid } from './lib/grid-layout.js';

/* global tf */

// The seed's detection rule.
const THRESHOLD = 0.7;
const NMS_IOU = 0.2;

// What tests (and curious users, from the devtools console) can read.
const state = {
  frames: 0,
  lastDetections: [],
  fps: 0,
  ready: false,
  error: null,
  backend: null,
  /** Detections over all frames so far (a blank stream must keep this at 0). */
  detectionsSeen: 0,
  /** [width, height] of the video frames the boxes refer to. */
  videoSize: null,
};
window.__pipe = state;

const $ = (id) => document.getElementById(id);
const video = $('video');
const overlay = $('overlay');
const statusEl = $('status');

function setStatus(text, isError = false) {
  statusEl.textContent = text;
  statusEl.classList.toggle('error', isError);
}

/**
 * The passthrough head's YOLOv2 reorg, the same computation as PipeSpaceToDepth in
 * stages/lib/grid-net.ts: [h, w, c] → [ceil(h/2), ceil(w/2), 4c], odd sides zero-padded first.
 * It must be registered under the same class name before the model is loaded.
 */
function registerPipeLayers() {
  class PipeSpaceToDepth extends tf.layers.Layer {
    static className = 'PipeSpaceToDepth';
    computeOutputShape(shape) {
      const half = (v) => (v === null || v === undefined ? null : Math.ceil(v / 2));
      return [shape[0], half(shape[1]), half(shape[2]), shape[3] * 4];
    }
    call(inputs) {
      return tf.tidy(() => {
        const x = Array.isArray(inputs) ? inputs[0] : inputs;
        const [b, h, w, c] = x.shape;
        const padded = h % 2 || w % 2 ? tf.pad(x, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]]) : x;
        const H = Math.ceil(h / 2);
        const W = Math.ceil(w / 2);
        return padded.reshape([b, H, 2, W, 2, c]).transpose([0, 1, 3, 2, 4, 5]).reshape([b, H, W, 4 * c]);
      });
    }
  }
  tf.serialization.registerClass(PipeSpaceToDepth);
}

/** WebGL when this browser really has it (probing first keeps tfjs's fallback warning out of the console). */
async function chooseBackend() {
  const probe = document.createElement('canvas');
  const gl = probe.getContext('webgl2') || probe.getContext('webgl');
  if (gl) {
    try {
      if (await tf.setBackend('webgl')) {
        await tf.ready();
        return 'webgl';
      }
    } catch {
      // fall through to the CPU backend
    }
  }
  await tf.setBackend('cpu');
  await tf.ready();
  return 'cpu';
}

async function fetchJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function main() {
  if (typeof tf === 'undefined') throw new Error('/tf.min.js did not load');
  const layout = await fetchJson('/layout.json');
  if (layout.format !== 'pipe-grid-v1') throw new Error(`/layout.json: unknown format ${layout.format}`);
  registerPipeLayers();
  state.backend = await chooseBackend();
  setStatus(`loading model (${state.backend})…`);
  const model = await tf.loadLayersModel('/model/model.json');
  const S = layout.inputSize;
  const padding = layout.input?.padding === 'centre' ? 'centre' : 'bottom-right';
  const pixelScale = layout.input?.scale ?? 1 / 255;
  // One warm-up pass compiles the kernels, so the first live frame is not a long stall.
  tf.tidy(() => model.predict(tf.zeros([1, S, S, 3]))).dispose();
  $('model').textContent = `${S}px input, ${layout.grid}×${layout.grid} grid, ${state.backend}`;

  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error('this browser gives no camera here (a page needs https or localhost for getUserMedia)');
  }
  setStatus('waiting for the camera…');
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  video.srcObject = stream;
  await new Promise((ok) => (video.readyState >= 1 ? ok() : video.addEventListener('loadedmetadata', ok, { once: true })));
  await video.play();

  // The letterboxed input is drawn here; its pixels are read back every frame.
  const input = document.createElement('canvas');
  input.width = S;
  input.height = S;
  const inCtx = input.getContext('2d', { willReadFrequently: true });
  const heat = document.createElement('canvas');
  heat.width = layout.grid;
  heat.height = layout.grid;
  const heatCtx = heat.getContext('2d');
  const heatPixels = heatCtx.createImageData(layout.grid, layout.grid);
  const ctx = overlay.getContext('2d');
  const frameTimes = [];

  state.ready = true;
  setStatus('running');

  const step = async () => {
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    if (!vw || !vh || video.readyState < 2) return; // no frame yet
    $('stage').style.setProperty('--aspect', String(vw / vh));
    // The overlay has the displayed size in device pixels (sharp text on a scaled-up small
    // video); drawing happens in video pixels through a scale transform.
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round((overlay.clientWidth || vw) * dpr));
    const ch = Math.max(1, Math.round((overlay.clientHeight || vh) * dpr));
    if (overlay.width !== cw || overlay.height !== ch) {
      overlay.width = cw;
      overlay.height = ch;
    }
    ctx.setTransform(cw / vw, 0, 0, ch / vh, 0, 0);
    // Same letterbox as training: longer side to S, aspect kept, black padding where the
    // layout says (bottom-right, or split for 'centre').
    const g = letterboxGeometry(vw, vh, S, padding);
    inCtx.fillStyle = '#000';
    inCtx.fillRect(0, 0, S, S);
    inCtx.imageSmoothingQuality = 'high';
    inCtx.drawImage(video, g.padX, g.padY, g.width, g.height);
    const pixels = inCtx.getImageData(0, 0, S, S);
    const out = tf.tidy(() => model.predict(tf.browser.fromPixels(pixels).toFloat().mul(pixelScale).expandDims(0)));
    const raw = await out.data();
    out.dispose();

    // Input (letterboxed) pixels → video pixels.
    const toVideo = (x, y) => [(x - g.padX) / g.scale, (y - g.padY) / g.scale];
    const found = detect(raw, layout, { threshold: THRESHOLD, nmsIou: NMS_IOU }).map((d) => {
      const [x1, y1] = toVideo(d.box[0], d.box[1]);
      const [x2, y2] = toVideo(d.box[2], d.box[3]);
      return {
        box: [Math.max(0, x1), Math.max(0, y1), Math.min(vw, x2), Math.min(vh, y2)],
        inputBox: d.box,
        confidence: d.confidence,
        gender: d.gender,
        genderLabel: layout.genderLabels[d.gender],
        genderProbs: d.genderProbs,
        ageBucket: d.ageBucket,
        ageLabel: layout.ageLabels[d.ageBucket],
        ageProbs: d.ageProbs,
        cell: d.cell,
      };
    });

    const now = performance.now();
    frameTimes.push(now);
    while (frameTimes.length > 2 && now - frameTimes[0] > 2000) frameTimes.shift();
    const fps = frameTimes.length > 1 ? ((frameTimes.length - 1) * 1000) / (now - frameTimes[0]) : 0;

    draw(ctx, { raw, layout, g, found, fps, vw, vh, heatCtx, heatPixels, heat });
    state.lastDetections = found;
    state.detectionsSeen += found.length;
    state.videoSize = [vw, vh];
    state.fps = fps;
    state.frames++;
  };

  const loop = async () => {
    try {
      await step();
    } catch (err) {
      fail(err);
      return;
    }
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
}

function draw(ctx, { raw, layout, g, found, fps, vw, vh, heatCtx, heatPixels, heat }) {
  ctx.clearRect(0, 0, vw, vh);

  // Heat map: each cell's confidence as red with matching opacity, over the cell's area.
  const n = layout.grid * layout.grid;
  const px = heatPixels.data;
  for (let i = 0; i < n; i++) {
    const c = sigmoid(raw[i * CHANNELS + CH.conf]);
    px[i * 4] = 255;
    px[i * 4 + 1] = Math.round(200 * (1 - c));
    px[i * 4 + 2] = 0;
    px[i * 4 + 3] = Math.round(150 * c);
  }
  heatCtx.putImageData(heatPixels, 0, 0);
  const side = (layout.grid * layout.stride) / g.scale; // the grid may overhang the input by < 1 cell
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(heat, -g.padX / g.scale, -g.padY / g.scale, side, side);

  // Video pixels per CSS pixel: text and lines keep one size on screen whatever the video's.
  const unit = vw / (overlay.clientWidth || vw);
  const font = 13 * unit;
  ctx.font = `600 ${font}px system-ui, sans-serif`;
  ctx.textBaseline = 'top';
  for (const d of found) {
    const [x1, y1, x2, y2] = d.box;
    const colour = d.gender === 0 ? '#ff5fa2' : '#4fb3ff';
    ctx.lineWidth = 2 * unit;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const pct = (p) => `${Math.round(100 * p)}%`;
    const lines = [
      `${d.genderLabel} ${pct(d.genderProbs[d.gender])}`,
      `age ${d.ageLabel} ${pct(d.ageProbs[d.ageBucket])}`,
      `face ${pct(d.confidence)}`,
    ];
    const w = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 8 * unit;
    const h = lines.length * (font + 2 * unit) + 6 * unit;
    // Above the box when there is room, else inside its top.
    const ty = y1 - h >= 0 ? y1 - h : y1;
    const tx = Math.min(Math.max(0, x1), Math.max(0, vw - w));
    ctx.fillStyle = 'rgba(0, 0, 0, 0.65)';
    ctx.fillRect(tx, ty, w, h);
    ctx.fillStyle = colour;
    lines.forEach((l, i) => ctx.fillText(l, tx + 4 * unit, ty + 3 * unit + i * (font + 2 * unit)));
  }

  const info = `${fps.toFixed(1)} fps · ${state.backend} · ${found.length} face${found.length === 1 ? '' : 's'}`;
  const w = ctx.measureText(info).width + 10 * unit;
  ctx.fillStyle = 'rgba(0, 0, 0, 0.6)';
  ctx.fillRect(0, 0, w, font + 8 * unit);
  ctx.fillStyle = '#fff';
  ctx.fillText(info, 5 * unit, 4 * unit);
}

function fail(err) {
  const message = err?.name === 'NotAllowedError' ? 'camera permission was denied' : err?.name === 'NotFoundError' ? 'no camera found' : String(err?.message ?? err);
  state.error = message;
  setStatus(`error: ${message}`, true);
  console.error('pipe serve:', err);
}

main().catch(fail);
