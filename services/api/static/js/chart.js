// A line chart drawn on <canvas>: a few series of {x, y} points, round-number axes, a legend.
// The number of points drawn is mirrored in canvas.dataset.points, for tests and curious people.

const COLORS = ['#2563eb', '#f97316', '#059669', '#9333ea'];
const GRID = '#e5e7eb';
const AXIS_TEXT = '#6b7280';
const FONT = '11px -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, Arial, sans-serif';
const PAD = { left: 48, right: 14, top: 28, bottom: 28 };

/** Return a round step (1, 2 or 5 × 10^k) near `raw`. */
function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  const f = raw / power;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
}

/** Return [lo, hi, step]: the range widened to whole steps (a fixed end stays as given). */
function axis(lo, hi, fixedLo, fixedHi, count, integer) {
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  let step = niceStep((hi - lo) / count);
  if (integer) step = Math.max(1, Math.round(step));
  return [fixedLo ?? Math.floor(lo / step) * step, fixedHi ?? Math.ceil(hi / step) * step, step];
}

function label(value, step) {
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return value.toFixed(Math.min(decimals, 4));
}

export class LineChart {
  /**
   * `series`: [{key, label, color?, dashed?}]. `options`: {yMin, yMax} fix an end of the y axis
   * (else it fits the data), {empty} is the text shown before the first point.
   */
  constructor(canvas, series, options = {}) {
    this.canvas = canvas;
    this.series = series.map((s, i) => ({ color: COLORS[i % COLORS.length], ...s, points: [] }));
    this.options = { empty: 'No data yet', ...options };
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /** Replace the data: `points` maps series keys to [{x, y}]; points without a finite y are skipped. */
  setData(points) {
    let total = 0;
    for (const s of this.series) {
      s.points = (points[s.key] || []).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
      total += s.points.length;
    }
    this.canvas.dataset.points = String(total);
    this.draw();
  }

  /** Draw at the canvas's CSS size, sharp on high-density screens. */
  draw() {
    const { canvas } = this;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return; // not laid out (a hidden tab): the ResizeObserver calls again
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;
    const plot = { x: PAD.left, y: PAD.top, w: width - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
    this.drawLegend(ctx);
    const all = this.series.flatMap((s) => s.points);
    if (!all.length) {
      ctx.fillStyle = AXIS_TEXT;
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText(this.options.empty, plot.x + plot.w / 2, plot.y + plot.h / 2);
      return;
    }
    const xs = all.map((p) => p.x);
    const ys = all.map((p) => p.y);
    const integerX = xs.every(Number.isInteger);
    // The x axis spans the data exactly (epoch 1 to the last); the y axis ends on round values.
    const [xLo, xHi] = [Math.min(...xs), Math.max(...xs)];
    const exact = xHi > xLo ? [xLo, xHi] : [undefined, undefined];
    const [x0, x1, xStep] = axis(xLo, xHi, ...exact, Math.max(2, Math.floor(plot.w / 70)), integerX);
    const [y0, y1, yStep] = axis(Math.min(...ys), Math.max(...ys), this.options.yMin, this.options.yMax,
      Math.max(2, Math.floor(plot.h / 40)), false);
    const px = (x) => plot.x + ((x - x0) / (x1 - x0)) * plot.w;
    const py = (y) => plot.y + plot.h - ((y - y0) / (y1 - y0)) * plot.h;

    ctx.lineWidth = 1;
    ctx.strokeStyle = GRID;
    ctx.fillStyle = AXIS_TEXT;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let y = y0; y <= y1 + yStep / 2; y += yStep) {
      const v = Math.round(py(y)) + 0.5;
      ctx.beginPath(); ctx.moveTo(plot.x, v); ctx.lineTo(plot.x + plot.w, v); ctx.stroke();
      ctx.fillText(label(y, yStep), plot.x - 8, v);
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (let x = Math.ceil(x0 / xStep) * xStep; x <= x1 + 1e-9; x += xStep) {
      ctx.fillText(label(x, xStep), px(x), plot.y + plot.h + 8);
    }
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    ctx.fillText('x: epoch', width - PAD.right, 10);

    for (const s of this.series) {
      if (!s.points.length) continue;
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.setLineDash(s.dashed ? [5, 4] : []);
      ctx.beginPath();
      s.points.forEach((p, i) => (i ? ctx.lineTo(px(p.x), py(p.y)) : ctx.moveTo(px(p.x), py(p.y))));
      ctx.stroke();
      ctx.setLineDash([]);
      if (s.points.length <= 40) {
        for (const p of s.points) {
          ctx.beginPath(); ctx.arc(px(p.x), py(p.y), 2.5, 0, 2 * Math.PI); ctx.fill();
        }
      }
    }
  }

  drawLegend(ctx) {
    let x = PAD.left;
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    for (const s of this.series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.setLineDash(s.dashed ? [5, 4] : []);
      ctx.beginPath(); ctx.moveTo(x, 10); ctx.lineTo(x + 16, 10); ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = '#374151';
      ctx.fillText(s.label, x + 21, 10);
      x += 21 + ctx.measureText(s.label).width + 16;
    }
  }
}
