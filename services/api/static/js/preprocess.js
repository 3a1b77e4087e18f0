// A picture of one digit → the 784 pixels (0–255) of MNIST's convention, the way MNIST was made.
//
// This is client/images.py's `to_mnist`, step by step, so that a drawing classified here and the
// same picture sent by `mnist predict` reach the model as the same bytes. tests/test_dashboard.py
// runs both on the same pictures and compares them. Arithmetic follows NumPy's float32 where the
// client uses float32 (Float32Array stores and Math.fround), and PIL's Lanczos filter exactly.
//
//  1. Grayscale: PIL's "L" luma, (19595·R + 38470·G + 7471·B + 32768) >> 16; transparent pixels
//     are first composited over white, with PIL's integer alpha_composite.
//  2. Polarity: the background is the median of the border (a frame 5 % of the shorter side wide,
//     at least 1 pixel). If the ink is darker than the background in total, the image is inverted.
//  3. Ink: the background is subtracted, then the border's noise (its 90th percentile above the
//     background, at most a quarter of the strongest ink); the strongest ink is stretched to 255.
//  4. Crop to the bounding box of the ink above a fifth of its maximum. Fit it into 20×20, keeping
//     the aspect ratio (sides rounded half to even), with Lanczos-3 resampling; negative overshoot
//     is clipped and the strongest ink stretched back to 255.
//  5. Centre: placed in 28×28 so that its intensity-weighted centre of mass (in pixel indices) is at
//     (14, 14), shifted by whole pixels (rounded half to even); whatever falls outside is cut off.
//     Pixels are rounded half to even.

export const SIZE = 28;
export const BOX = 20;
const CENTRE = 14;
const BORDER_SHARE = 0.05;
const BOX_THRESHOLD = 0.2;
const NOISE_QUANTILE = 0.9;
const MAX_NOISE_SHARE = 0.25;
const f32 = Math.fround;

/** Return the largest value of an array (a spread of 78,400 arguments would overflow the stack). */
function maxOf(values) {
  let top = -Infinity;
  for (const v of values) if (v > top) top = v;
  return top;
}

/** Round half to even, as Python's round() and NumPy's rint do. */
export function roundEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Return the brightness (Float32Array, row-major) of RGBA bytes; transparency counts as white. */
export function grayscale(rgba, width, height) {
  const gray = new Float32Array(width * height);
  const div255 = (v) => (((v >> 8) + v) >> 8); // PIL's SHIFTFORDIV255
  for (let i = 0; i < gray.length; i++) {
    const o = 4 * i;
    let [r, g, b] = [rgba[o], rgba[o + 1], rgba[o + 2]];
    const a = rgba[o + 3];
    if (a === 0) {
      r = g = b = 255;
    } else if (a < 255) {
      const coef1 = Math.floor((a * 255 * 255 * 128) / (a * 255 + 255 * (255 - a)));
      const coef2 = 255 * 128 - coef1;
      [r, g, b] = [r, g, b].map((c) => div255(c * coef1 + 255 * coef2 + (0x80 << 7)) >> 7);
    }
    gray[i] = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16;
  }
  return gray;
}

/** Return the pixels of the outer frame of a width×height image, as an array of numbers. */
function border(pixels, width, height) {
  const k = Math.max(1, roundEven(Math.min(width, height) * BORDER_SHARE));
  if (2 * k >= Math.min(width, height)) return Array.from(pixels);
  const out = [];
  for (let y = 0; y < height; y++) {
    const edgeRow = y < k || y >= height - k;
    for (let x = 0; x < width; x++) {
      if (edgeRow || x < k || x >= width - k) out.push(pixels[y * width + x]);
    }
  }
  return out;
}

function sorted(values) {
  return Float64Array.from(values).sort();
}

/** NumPy's median of values that are whole or half numbers (exact in float32). */
function median(values) {
  const s = sorted(values);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : f32(f32(s[mid - 1] + s[mid]) / 2);
}

/** NumPy's quantile (method "linear"), computed as NumPy does it in float64. */
function quantile(values, q) {
  const s = sorted(values);
  const virtual = (s.length - 1) * q;
  const lo = Math.floor(virtual);
  const hi = Math.min(lo + 1, s.length - 1);
  const t = virtual - lo;
  const diff = s[hi] - s[lo];
  return t >= 0.5 ? s[hi] - diff * (1 - t) : s[lo] + diff * t;
}

/** Return light-on-dark ink (Float32Array): background and border noise at 0, strongest ink at 255. */
export function inkImage(gray, width, height) {
  let pixels = gray;
  const background = median(border(pixels, width, height));
  let darker = 0;
  let lighter = 0;
  for (const v of pixels) {
    if (v < background) darker += background - v;
    else lighter += v - background;
  }
  if (darker > lighter) pixels = pixels.map((v) => 255 - v);
  const edge = border(pixels, width, height);
  const level = median(edge);
  let ink = pixels.map((v) => Math.max(v - level, 0));
  let top = maxOf(ink);
  if (top <= 0) return ink;
  // What the border still holds above the background is noise (JPEG ringing, paper grain).
  const noise = quantile(edge.map((v) => Math.max(f32(v - level), 0)), NOISE_QUANTILE);
  const floor = f32(Math.min(noise, MAX_NOISE_SHARE * top));
  ink = ink.map((v) => Math.max(v - floor, 0));
  top = maxOf(ink);
  if (top <= 0) return ink;
  const gain = f32(255 / top);
  return ink.map((v) => v * gain);
}

/** Return {top, bottom, left, right} (bottom and right exclusive) of the ink above a fifth of its max. */
export function boundingBox(ink, width, height) {
  const top = ink.length ? maxOf(ink) : 0;
  if (top <= 0) return null;
  const threshold = f32(BOX_THRESHOLD * top);
  let [y0, y1, x0, x1] = [height, -1, width, -1];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (ink[y * width + x] > threshold) {
        y0 = Math.min(y0, y); y1 = Math.max(y1, y);
        x0 = Math.min(x0, x); x1 = Math.max(x1, x);
      }
    }
  }
  return { top: y0, bottom: y1 + 1, left: x0, right: x1 + 1 };
}

function lanczos(x) {
  const sinc = (v) => (v === 0 ? 1 : Math.sin(v * Math.PI) / (v * Math.PI));
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

/** PIL's resampling coefficients (Resample.c, precompute_coeffs) of Lanczos-3, n → m pixels. */
function coefficients(n, m) {
  const scale = n / m;
  const filterscale = Math.max(scale, 1);
  const support = 3 * filterscale;
  const out = [];
  for (let i = 0; i < m; i++) {
    const center = (i + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), n) - xmin;
    const k = [];
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const w = lanczos((x + xmin - center + 0.5) / filterscale);
      k.push(w);
      total += w;
    }
    out.push({ xmin, k: total !== 0 ? k.map((w) => w / total) : k });
  }
  return out;
}

/** Resize a float32 image as PIL's Image.resize(LANCZOS) does in mode "F": horizontal pass first. */
export function resizeLanczos(pixels, width, height, outW, outH) {
  let data = pixels;
  let w = width;
  if (outW !== width) {
    const cols = coefficients(width, outW);
    const next = new Float32Array(outW * height);
    for (let y = 0; y < height; y++) {
      for (let i = 0; i < outW; i++) {
        let sum = 0;
        cols[i].k.forEach((c, x) => { sum += data[y * w + cols[i].xmin + x] * c; });
        next[y * outW + i] = sum;
      }
    }
    data = next;
    w = outW;
  }
  if (outH !== height) {
    const rows = coefficients(height, outH);
    const next = new Float32Array(w * outH);
    for (let j = 0; j < outH; j++) {
      for (let x = 0; x < w; x++) {
        let sum = 0;
        rows[j].k.forEach((c, y) => { sum += data[(rows[j].xmin + y) * w + x] * c; });
        next[j * w + x] = sum;
      }
    }
    data = next;
  }
  return data;
}

/** Return the crop fitted into 20×20 (Float32Array) and its size [w, h]. */
export function fitBox(patch, width, height) {
  const scale = BOX / Math.max(width, height);
  const w = Math.max(1, Math.min(BOX, roundEven(width * scale)));
  const h = Math.max(1, Math.min(BOX, roundEven(height * scale)));
  if (w === width && h === height) return [patch, w, h];
  const resized = resizeLanczos(patch, width, height, w, h).map((v) => Math.max(v, 0));
  const top = maxOf(resized);
  if (top <= 0) return [resized, w, h];
  const gain = f32(255 / top);
  return [resized.map((v) => v * gain), w, h];
}

/** Return the 28×28 uint8 image with the patch placed so that its centre of mass is at (14, 14). */
export function centre(patch, width, height) {
  let mass = 0;
  let cy = 0;
  let cx = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = patch[y * width + x];
      mass += v;
      cy += v * y;
      cx += v * x;
    }
  }
  const out = new Uint8Array(SIZE * SIZE);
  if (!(mass > 0)) return out;
  const top = roundEven(CENTRE - cy / mass);
  const left = roundEven(CENTRE - cx / mass);
  for (let y = Math.max(top, 0); y < Math.min(top + height, SIZE); y++) {
    for (let x = Math.max(left, 0); x < Math.min(left + width, SIZE); x++) {
      out[y * SIZE + x] = Math.min(255, Math.max(0, roundEven(patch[(y - top) * width + (x - left)])));
    }
  }
  return out;
}

/** Return the 784 MNIST pixels (Uint8Array) of an RGBA image; all zeros when it is blank. */
export function toMnist(rgba, width, height) {
  const ink = inkImage(grayscale(rgba, width, height), width, height);
  const box = boundingBox(ink, width, height);
  if (!box) return new Uint8Array(SIZE * SIZE);
  const w = box.right - box.left;
  const h = box.bottom - box.top;
  const crop = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    const row = (box.top + y) * width;
    crop.set(ink.subarray(row + box.left, row + box.right), y * w);
  }
  const [fitted, fw, fh] = fitBox(crop, w, h);
  return centre(fitted, fw, fh);
}

/** Return true when no pixel is lit. */
export const isBlank = (pixels) => pixels.every((v) => v === 0);
