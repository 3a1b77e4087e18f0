// Training view: submit a job, list recent ones, follow one live over Server-Sent Events.
import { api } from './api.js';
import { LineChart } from './chart.js';
import { ago, byId, describeError, fixed, h, percent, toast } from './dom.js';
import { fillDatasets } from './pickers.js';

const ENDED = new Set(['finished', 'failed', 'canceled']);
// Milliseconds between two refreshes of the job list while the view is shown.
const LIST_INTERVAL = 5000;
const NUMBERS = ['learning_rate', 'batch_size', 'epochs', 'seed'];

let charts = null;
let source = null; // event stream of the followed job (api.followJob)
let watched = null; // { id, running, status }: running once a live event showed it unfinished
let listTimer = null;

export function initJobs() {
  charts = {
    loss: new LineChart(byId('chart-loss'), [
      { key: 'loss', label: 'train loss' },
      { key: 'val_loss', label: 'validation loss', dashed: true },
    ], { yMin: 0, empty: 'The curve starts after the first epoch' }),
    accuracy: new LineChart(byId('chart-accuracy'), [
      { key: 'train_accuracy', label: 'train' },
      { key: 'val_accuracy', label: 'validation', dashed: true },
    ], { yMax: 1, empty: 'The curve starts after the first epoch' }),
  };
  byId('job-form').addEventListener('submit', submit);
  byId('jobs-refresh').addEventListener('click', refreshJobs);
  byId('watch-cancel').addEventListener('click', cancel);
}

/** Called when the view is shown: fresh datasets and jobs, then the list refreshes itself. */
export function showJobs() {
  fillDatasets(byId('job-form').elements.dataset, { allowMissing: true }).catch(() => {});
  refreshJobs();
  clearInterval(listTimer);
  listTimer = setInterval(() => { if (!document.hidden) refreshJobs(); }, LIST_INTERVAL);
}

/** Called when the view is hidden: the list stops refreshing (a followed job stays followed). */
export function hideJobs() {
  clearInterval(listTimer);
  listTimer = null;
}

function readSpec(form) {
  const f = new FormData(form);
  const spec = { model: String(f.get('model')).trim(), dataset: f.get('dataset') };
  if (f.get('recipe')) spec.recipe = f.get('recipe');
  if (f.get('optimizer')) spec.optimizer = f.get('optimizer');
  const hidden = String(f.get('hidden')).split(/[\s,]+/).filter(Boolean);
  if (hidden.length) spec.hidden = hidden.map(Number);
  for (const name of NUMBERS) {
    const raw = String(f.get(name)).trim();
    if (raw !== '') spec[name] = Number(raw);
  }
  return spec;
}

function showFieldErrors(form, errors) {
  for (const old of form.querySelectorAll('.field-error')) old.remove();
  for (const [field, problems] of Object.entries(errors || {})) {
    const input = form.elements[field];
    const text = flatten(problems).join(' ');
    if (input && input.closest) input.closest('label').append(h('small', { class: 'field-error' }, text));
  }
}

function flatten(problems) {
  if (Array.isArray(problems)) return problems.flatMap(flatten);
  if (problems && typeof problems === 'object') return Object.values(problems).flatMap(flatten);
  return [String(problems)];
}

async function submit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const error = byId('job-form-error');
  const button = form.querySelector('button[type=submit]');
  error.hidden = true;
  showFieldErrors(form, null);
  button.disabled = true;
  try {
    const job = await api.submitJob(readSpec(form));
    toast(`Job ${job.id.slice(0, 8)} queued`, 'ok');
    watch(job.id);
    refreshJobs();
  } catch (err) {
    error.textContent = describeError(err);
    error.hidden = false;
    showFieldErrors(form, err.errors);
  } finally {
    button.disabled = false;
  }
}

/** Follow job `id`: its view and curves update with each event of its stream until it ends. */
export function watch(id) {
  if (source) source.close();
  watched = { id, running: false, status: null };
  byId('watch-charts').hidden = false;
  if (matchMedia('(max-width: 759px)').matches) {
    byId('job-watch').scrollIntoView({ behavior: 'smooth', block: 'start' }); // below the form on phones
  }
  render({ id, status: 'queued', progress: null, curve: [] }, 'Connecting…');
  markWatched();
  const stream = api.followJob(id, (event, data) => {
    if (source !== stream) return; // another job is followed now
    if (event === 'progress') {
      watched.running = !ENDED.has(data.status); // seen live: its end is news (a toast, new versions)
      render(data);
    } else if (event === 'end') {
      source = null;
      render(data);
      if (watched.running) ended(data);
    } else if (event === 'error') {
      // The server's own `event: error` (the job expired, Redis is away), or an error answer.
      source = null;
      byId('watch-message').textContent = (data && data.message)
        || 'The job\'s event stream closed: refresh the list to see where it stands.';
    }
  });
  source = stream;
}

function ended(view) {
  if (view.status === 'finished' && view.result) {
    toast(`Published ${view.result.model} v${view.result.version}`, 'ok');
    document.dispatchEvent(new CustomEvent('registry-changed'));
  } else if (view.status === 'failed') {
    toast(`Job failed: ${view.error || 'see the worker log'}`, 'error');
  }
}

function render(view, note) {
  const box = byId('job-watch');
  const p = view.progress || {};
  const done = ENDED.has(view.status);
  if (!note) { // a real view, not the placeholder shown while connecting
    if (watched.status && watched.status !== view.status) refreshJobs(); // the list shows it too
    watched.status = view.status;
  }
  box.dataset.jobId = view.id;
  box.dataset.status = view.status;
  const pill = byId('watch-status');
  pill.textContent = view.status;
  pill.className = `pill status-${view.status}`;
  byId('watch-id').textContent = view.id.slice(0, 8);
  byId('watch-id').title = view.id;
  byId('watch-cancel').hidden = done;
  const fraction = view.status === 'finished' ? 1 : p.fraction || 0;
  byId('watch-bar').style.width = `${(fraction * 100).toFixed(1)}%`;
  byId('watch-bar').classList.toggle('failed', view.status === 'failed' || view.status === 'canceled');
  byId('watch-stats').replaceChildren(
    stat('Progress', percent(fraction, 0)),
    stat('Epoch', p.epoch ?? '—'),
    stat('Iteration', p.iteration != null ? `${p.iteration}${p.total_iterations ? ` / ${p.total_iterations}` : ''}` : '—'),
    stat('Loss', fixed(p.loss)),
    stat('Train acc.', percent(p.train_accuracy)),
    stat('Val. acc.', percent(p.val_accuracy)),
  );
  byId('watch-message').replaceChildren(...message(view, note));
  const curve = view.curve || [];
  const series = (key) => curve.map((c) => ({ x: c.epoch, y: c[key] }));
  charts.loss.setData({ loss: series('loss'), val_loss: series('val_loss') });
  charts.accuracy.setData({ train_accuracy: series('train_accuracy'), val_accuracy: series('val_accuracy') });
}

function message(view, note) {
  if (note) return [note];
  const dataset = (view.dataset && view.dataset.name) || (view.spec && view.spec.dataset) || '';
  switch (view.status) {
    case 'queued': return ['Waiting for a worker…'];
    case 'started': return [`Training on ${dataset}…`];
    case 'finished': {
      const r = view.result || {};
      const acc = r.metrics && r.metrics.test_accuracy;
      return ['Published ', h('a', { href: '#models' }, `${r.model} v${r.version}`),
        acc != null ? ` · test accuracy ${percent(acc)}` : ''];
    }
    case 'failed': return [`Failed: ${view.error || 'no reason given'}`];
    case 'canceled': return ['Canceled: nothing was published.'];
    default: return [view.status];
  }
}

function stat(name, value) {
  return h('div', {}, h('dt', {}, name), h('dd', {}, String(value)));
}

async function cancel() {
  if (!watched) return;
  try {
    const view = await api.cancelJob(watched.id);
    render(view);
    toast(view.status === 'canceled' ? 'Job canceled' : 'Stopping the job…');
    refreshJobs();
  } catch (err) {
    toast(describeError(err), 'error');
  }
}

/** Reload the recent jobs list. */
export async function refreshJobs() {
  const list = byId('jobs-list');
  try {
    const jobs = await api.jobs();
    list.replaceChildren(...(jobs.length ? jobs.map(jobRow) : [h('li', { class: 'empty' }, 'No job yet.')]));
    markWatched();
  } catch (err) {
    list.replaceChildren(h('li', { class: 'empty error' }, describeError(err)));
  }
}

function jobRow(job) {
  const spec = job.spec || {};
  const r = job.result;
  const target = r && r.version ? `${r.model} v${r.version}` : spec.model || 'mnist';
  const p = job.progress;
  const figure = job.status === 'finished' && r && r.metrics
    ? `test ${percent(r.metrics.test_accuracy)}`
    : job.status === 'started' && p ? `${Math.round((p.fraction || 0) * 100)}%` : job.error ? 'error' : '';
  return h('li', {},
    h('button', { type: 'button', class: 'job-row', dataset: { jobId: job.id }, onclick: () => watch(job.id), title: job.error || '' },
      h('span', { class: `pill status-${job.status}` }, job.status),
      h('span', { class: 'mono' }, job.id.slice(0, 8)),
      h('span', { class: 'job-target' }, target),
      h('span', { class: 'muted' }, spec.dataset || ''),
      h('span', { class: 'job-figure' }, figure),
      h('span', { class: 'muted job-time' }, ago(job.created_at))));
}

function markWatched() {
  for (const row of document.querySelectorAll('.job-row')) {
    row.classList.toggle('is-watched', Boolean(watched) && row.dataset.jobId === watched.id);
  }
}
