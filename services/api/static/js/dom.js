// Small DOM and formatting helpers. Elements are built with createElement, never innerHTML:
// server data (names, error messages) is always text, and the page's CSP allows no inline code.

/** Return a new element: h('a', {class: 'x', href: '#', onclick: fn}, 'text', child). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Return the element with this id (throws if the page lacks it: a typo, not a runtime state). */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`no element #${id}`);
  return el;
}

/** Format a 0–1 fraction as a percentage, or a dash when absent. */
export function percent(x, digits = 1) {
  return typeof x === 'number' && Number.isFinite(x) ? `${(x * 100).toFixed(digits)}%` : '—';
}

/** Format a number with `digits` decimals, or a dash when absent. */
export function fixed(x, digits = 3) {
  return typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '—';
}

/** Format seconds as "42.1 s" or "3 min 05 s". */
export function duration(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '—';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${String(Math.round(seconds % 60)).padStart(2, '0')} s`;
}

/** Format an ISO time as "5 min ago" (recent) or a local date and time. */
export function ago(iso) {
  if (!iso) return '—';
  const then = new Date(iso);
  const s = (Date.now() - then.getTime()) / 1000;
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return then.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** Return a size×size canvas showing `pixels` (0–255, row-major; an array or a Uint8Array) in gray. */
export function digitCanvas(pixels, size = 28) {
  const canvas = h('canvas', { width: size, height: size });
  const image = new ImageData(size, size);
  for (let i = 0; i < size * size; i += 1) {
    const v = pixels[i];
    image.data.set([v, v, v, 255], 4 * i);
  }
  canvas.getContext('2d').putImageData(image, 0, 0);
  return canvas;
}

/** Show a short message at the bottom of the page for a few seconds. */
export function toast(message, kind = 'info') {
  const box = byId('toasts');
  const item = h('div', { class: `toast ${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 7000 : 4000);
}

/** Return the message of an error, API or otherwise, for people. */
export function describeError(err) {
  return err && err.message ? err.message : String(err);
}
