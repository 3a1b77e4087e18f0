// Monitor view: per version, live traffic (requests, rate, split weight), online accuracy from
// feedback labels (the window's, and the total), shadow agreement and drift (GET …/monitor); the
// live feed of logged predictions; the rollout of production (rollout.js). Refreshed every 2 s
// while shown and visible; a refresh never overlaps the previous one.
import { api } from './api.js';
import { byId, describeError, fixed, h, percent } from './dom.js';
import { renderFeed } from './feed.js';
import { fillModels } from './pickers.js';
import { ALIAS, initRollout, renderRollout } from './rollout.js';

// Milliseconds between two refreshes while the view is shown and the browser tab visible.
const INTERVAL = 2000;
// Newest logged predictions in the live feed.
const FEED = 20;
// Versions shown without traffic, split or shadow (a new model): the newest few.
const IDLE_SHOWN = 6;

let timer = null;
let running = null; // the refresh in flight (a Promise), or null
let wanted = 0; // bumped when what is shown must be read again: a read begun before is not shown
let paused = false;
let last = null; // {model, at, requests: {version: n}} of the previous refresh: the rates

export function initMonitor() {
  const select = byId('monitor-model');
  select.addEventListener('change', () => {
    sessionStorage.setItem('mnist.model', select.value);
    last = null;
    reloadMonitor();
  });
  byId('monitor-pause').addEventListener('click', () => {
    paused = !paused;
    showLive();
    if (!paused) refreshMonitor();
  });
  document.addEventListener('visibilitychange', () => {
    showLive();
    if (timer && !document.hidden && !paused) refreshMonitor();
  });
  initRollout(() => select.value, reloadMonitor);
}

/** Called when the view is shown: the model list, the figures, then a refresh every 2 s. */
export async function showMonitor() {
  const select = byId('monitor-model');
  try {
    const remembered = sessionStorage.getItem('mnist.model');
    const names = await fillModels(select);
    if (remembered && names.includes(remembered)) select.value = remembered;
  } catch (err) {
    showError(describeError(err));
  }
  clearInterval(timer);
  timer = setInterval(() => { if (!document.hidden && !paused) refreshMonitor(); }, INTERVAL);
  showLive();
  await refreshMonitor();
}

/** Called when the view is hidden: the refreshes stop. */
export function hideMonitor() {
  clearInterval(timer);
  timer = null;
}

function showLive() {
  const live = byId('monitor-live');
  const state = paused ? 'paused' : document.hidden ? 'hidden' : 'live';
  live.textContent = state === 'live' ? 'live' : 'paused';
  live.dataset.state = state;
  const button = byId('monitor-pause');
  button.textContent = paused ? 'Resume' : 'Pause';
  button.setAttribute('aria-pressed', String(paused));
}

function showError(text) {
  const error = byId('monitor-error');
  error.textContent = text;
  error.hidden = !text;
}

/** Read the model's figures, rollout and newest predictions, and show them (one refresh at a time). */
export function refreshMonitor() {
  if (!running) running = load().finally(() => { running = null; });
  return running;
}

/** Read everything again, after the refresh in flight (it read what a decision has changed). */
function reloadMonitor() {
  wanted += 1;
  return running ? running.then(refreshMonitor) : refreshMonitor();
}

async function load() {
  const asked = wanted;
  const model = byId('monitor-model').value;
  if (!model) {
    showError('');
    byId('monitor-versions').replaceChildren(h('div', { class: 'empty' },
      h('p', {}, 'No model in the registry yet.'), h('a', { href: '#training', class: 'button primary' }, 'Train one')));
    return;
  }
  try {
    const [monitor, rollout, log] = await Promise.all([
      api.monitor(model), api.rollout(model, ALIAS), api.predictions(model, FEED),
    ]);
    if (asked !== wanted) return; // another model was chosen, or a decision made, meanwhile
    showError('');
    renderVersions(monitor, rollout);
    renderRollout(rollout, Object.keys(monitor.versions).map(Number));
    renderFeed(log.predictions);
  } catch (err) {
    showError(describeError(err));
  }
}

function renderVersions(monitor, rollout) {
  const now = performance.now();
  const rates = last && last.model === monitor.model ? last : null;
  last = { model: monitor.model, at: now, requests: {} };
  const split = rollout.split || {};
  const shadow = monitor.shadow;
  const entries = Object.entries(monitor.versions).map(([v, figures]) => {
    last.requests[v] = figures.requests;
    const rate = rates && v in rates.requests ? (figures.requests - rates.requests[v]) / ((now - rates.at) / 1000) : null;
    return { version: Number(v), figures, rate };
  });
  const busy = (e) => e.version in split || (shadow && shadow.version === e.version) || e.figures.requests > 0;
  let shown = entries.filter(busy);
  if (!shown.length) shown = entries.slice(-IDLE_SHOWN);
  const weight = (e) => split[e.version] ?? -1;
  shown.sort((a, b) => weight(b) - weight(a) || b.version - a.version);
  byId('monitor-versions').replaceChildren(...shown.map((e) => versionCard(e, split, rollout.canary, shadow, monitor.window)));
  const note = byId('monitor-hidden');
  const hidden = entries.length - shown.length;
  note.hidden = !hidden;
  note.textContent = hidden ? `${hidden} other version${hidden > 1 ? 's' : ''} without traffic not shown.` : '';
}

function versionCard({ version, figures: f, rate }, split, canary, shadow, feedbackWindow) {
  const weight = split[version];
  const drift = f.drift;
  const tags = [
    weight !== undefined ? h('span', { class: 'alias production' }, `${ALIAS} ${percent(weight, 0)}`) : null,
    canary && canary.version === version ? h('span', { class: 'tag canary' }, 'canary') : null,
    canary && canary.base === version ? h('span', { class: 'tag' }, 'base') : null,
    shadow && shadow.version === version ? h('span', { class: 'tag shadow' }, `shadow ${percent(shadow.sample, 0)}`) : null,
  ];
  return h('article', {
    class: `monitor-card${drift && drift.drifted ? ' is-drifted' : ''}`,
    dataset: {
      version: String(version),
      requests: String(f.requests),
      feedback: String(f.feedback),
      accuracy: f.online_accuracy === null ? '' : String(f.online_accuracy),
      weight: weight === undefined ? '' : String(weight),
      drifted: drift ? String(drift.drifted) : '',
    },
  },
  h('header', { class: 'version-head' }, h('span', { class: 'version-number' }, `v${version}`), tags),
  h('dl', { class: 'metrics' },
    figure('Requests', f.requests.toLocaleString(), rate === null ? 'counting…' : `${rate < 10 ? rate.toFixed(1) : Math.round(rate)}/s now`),
    accuracyFigure(f, feedbackWindow),
    f.shadow ? figure('Shadow agreement', percent(f.shadow.agreement), `of ${f.shadow.compared.toLocaleString()} compared`, 'agreement') : null,
    driftFigure(drift, f.requests)));
}

function labels(n) {
  return `${n.toLocaleString()} feedback label${n === 1 ? '' : 's'}`;
}

// The online accuracy is the feedback window's (its last W/2 + 1 to W labels): a version that
// turns bad shows it; the total since the version first served is shown beside it once they differ.
function accuracyFigure(f, feedbackWindow) {
  const total = f.total;
  const older = total && total.feedback > f.feedback;
  const item = figure('Online accuracy', percent(f.online_accuracy), older ? `last ${labels(f.feedback)}` : labels(f.feedback), 'strong accuracy');
  if (older) item.append(h('small', { class: 'muted total' }, `${percent(total.online_accuracy)} of ${total.feedback.toLocaleString()} in total`));
  if (feedbackWindow) item.title = `Over the last ${feedbackWindow.toLocaleString()} feedback labels at most (MNIST_FEEDBACK_WINDOW)`;
  return item;
}

function figure(name, value, note, kind = '') {
  return h('div', { class: `metric ${kind}` }, h('dt', {}, name), h('dd', {}, value), h('small', { class: 'muted' }, note));
}

function driftFigure(drift, requests) {
  if (!drift) {
    return figure('Drift', '—', requests ? 'no reference profile, or no image sampled yet' : 'no live image yet', 'drift');
  }
  const features = Object.entries(drift.features).map(([name, psi]) =>
    h('span', { class: psi > drift.threshold ? 'over' : '', title: `PSI of ${name}` }, `${name} ${fixed(psi, 2)}`));
  return h('div', { class: `metric drift${drift.drifted ? ' drifted' : ''}` },
    h('dt', {}, 'Drift (PSI)'),
    h('dd', {}, fixed(drift.score, 2), h('span', { class: 'threshold' }, ` / ${fixed(drift.threshold, 2)}`),
      drift.drifted ? h('span', { class: 'pill drift-pill' }, 'drifted') : null),
    h('small', { class: 'features' }, features));
}
