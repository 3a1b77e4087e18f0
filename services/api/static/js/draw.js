// Draw view: a digit drawn with any pointer (mouse, pen, touch), preprocessed like MNIST and
// classified by the chosen version, with its ten probabilities as bars.
import { api } from './api.js';
import { byId, describeError, h, percent } from './dom.js';
import { fillModels, fillVersions } from './pickers.js';
import { isBlank, SIZE, toMnist } from './preprocess.js';

// Stroke width in canvas pixels: a digit ~200 px tall is scaled by 0.1, so strokes end up
// ~2 px wide in 28×28, like MNIST's pen strokes.
const STROKE = 20;
// Milliseconds to wait after the pen lifts before asking (a next stroke cancels the wait).
const PREDICT_DELAY = 150;

let pad;
let ctx;
let last = null; // last pointer position while drawing
let timer = null;
let asked = 0; // number of the latest prediction request: older answers are dropped

export function initDraw() {
  pad = byId('pad');
  ctx = pad.getContext('2d', { willReadFrequently: true });
  clearPad();
  pad.addEventListener('pointerdown', (e) => {
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    clearTimeout(timer);
    last = point(e);
    line(last, last);
  });
  pad.addEventListener('pointermove', (e) => {
    if (!last) return;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    for (const c of events.length ? events : [e]) {
      const p = point(c);
      line(last, p);
      last = p;
    }
  });
  const lift = () => {
    if (!last) return;
    last = null;
    clearTimeout(timer);
    timer = setTimeout(predict, PREDICT_DELAY);
  };
  pad.addEventListener('pointerup', lift);
  pad.addEventListener('pointercancel', lift);
  byId('pad-clear').addEventListener('click', () => { clearPad(); showResult(null); });
  const model = byId('draw-model');
  model.addEventListener('change', async () => { await fillVersions(byId('draw-version'), model.value, { withDefault: true }); predict(); });
  byId('draw-version').addEventListener('change', predict);
  showResult(null);
}

/** Called when the view is shown: fresh model and version lists. */
export async function showDraw() {
  try {
    await fillModels(byId('draw-model'));
    await fillVersions(byId('draw-version'), byId('draw-model').value, { withDefault: true });
  } catch (err) {
    byId('draw-confidence').textContent = describeError(err);
  }
}

function point(e) {
  const rect = pad.getBoundingClientRect();
  return { x: ((e.clientX - rect.left) * pad.width) / rect.width, y: ((e.clientY - rect.top) * pad.height) / rect.height };
}

function line(a, b) {
  ctx.strokeStyle = '#fff';
  ctx.lineWidth = STROKE;
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  ctx.beginPath();
  ctx.moveTo(a.x, a.y);
  ctx.lineTo(b.x, b.y);
  ctx.stroke();
}

function clearPad() {
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, pad.width, pad.height);
  showPreview(new Uint8Array(SIZE * SIZE));
}

function showPreview(pixels) {
  const preview = byId('pad-preview');
  const image = new ImageData(SIZE, SIZE);
  pixels.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
  preview.getContext('2d').putImageData(image, 0, 0);
  preview.dataset.ink = String(pixels.reduce((n, v) => n + (v > 0), 0));
}

async function predict() {
  const pixels = toMnist(ctx.getImageData(0, 0, pad.width, pad.height).data, pad.width, pad.height);
  showPreview(pixels);
  const model = byId('draw-model').value;
  if (isBlank(pixels) || !model) return showResult(null);
  const n = ++asked;
  try {
    const answer = await api.predict(model, byId('draw-version').value, [Array.from(pixels)]);
    if (n === asked) showResult(answer);
  } catch (err) {
    if (n === asked) showResult(null, describeError(err));
  }
}

function showResult(answer, error = '') {
  const result = byId('draw-result');
  const bars = byId('draw-bars');
  const p = answer ? answer.predictions[0] : null;
  result.dataset.label = p ? String(p.label) : '';
  result.dataset.version = answer ? String(answer.model_version) : '';
  byId('draw-label').textContent = p ? String(p.label) : '?';
  byId('draw-confidence').textContent = error || (p ? `${percent(p.probabilities[p.label])} sure` : 'Draw a digit to classify it');
  byId('draw-confidence').classList.toggle('error', Boolean(error));
  byId('draw-answered').textContent = answer ? `answered by ${answer.model} v${answer.model_version}` : '';
  const probabilities = p ? p.probabilities : new Array(10).fill(0);
  bars.replaceChildren(...probabilities.map((q, digit) => {
    const fill = h('span', { class: 'bar-fill' });
    fill.style.width = `${(q * 100).toFixed(1)}%`;
    return h('li', { class: `prob-bar${p && digit === p.label ? ' best' : ''}`, dataset: { digit: String(digit), p: String(q) } },
      h('span', { class: 'bar-digit' }, String(digit)),
      h('span', { class: 'bar-track' }, fill),
      h('span', { class: 'bar-value' }, p ? percent(q) : ''));
  }));
}
