// The Monitor view's rollout card: production's split as a bar, the canary controls (start,
// promote, roll back: POST …/rollout with the API token) and the decision log with its reasons.
import { api } from './api.js';
import { ago, byId, describeError, h, percent, toast } from './dom.js';

/** The alias the controls roll out (the one predictions that name no version use). */
export const ALIAS = 'production';

let currentModel = () => '';
let decided = () => {};
let state = null; // the last GET/POST …/rollout answer shown

/** Wire the controls; `model()` names the model shown, `onDecided()` refreshes the view. */
export function initRollout(model, onDecided) {
  currentModel = model;
  decided = onDecided;
  byId('canary-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const version = Number(byId('canary-version').value);
    const weight = Number(byId('canary-weight').value) / 100;
    if (!version) return showError('Choose the version to canary.');
    if (!(weight > 0 && weight < 1)) return showError('The weight is the canary\'s share of the traffic: between 0 and 100 %.');
    decide({ action: 'canary', version, weight });
  });
  byId('canary-promote').addEventListener('click', () => decide({ action: 'promote' }));
  byId('canary-rollback').addEventListener('click', () => decide({ action: 'rollback' }));
}

function showError(text) {
  const error = byId('rollout-error');
  error.textContent = text;
  error.hidden = !text;
}

async function decide(body) {
  const model = currentModel();
  if (!model) return;
  const buttons = byId('canary-form').querySelectorAll('button');
  showError('');
  for (const b of buttons) b.disabled = true;
  try {
    const answer = await api.decide(model, { ...body, alias: ALIAS, reason: byId('rollout-reason').value.trim() });
    byId('rollout-reason').value = '';
    const newest = answer.decisions[0];
    toast(newest ? `${newest.action} v${newest.version}: ${ALIAS} is now ${splitText(answer.split)}` : 'Done', 'ok');
    document.dispatchEvent(new CustomEvent('registry-changed'));
    renderRollout(answer, null);
    await decided();
  } catch (err) {
    showError(describeError(err));
  } finally {
    renderButtons();
  }
}

function splitText(split) {
  const parts = Object.entries(split).sort((a, b) => b[1] - a[1]).map(([v, w]) => `v${v} ${percent(w, 0)}`);
  return parts.length ? parts.join(' · ') : 'not set';
}

/** Show an alias's rollout state (GET …/rollout); `versions` (the model's, when known) fill the picker. */
export function renderRollout(rollout, versions) {
  state = rollout;
  const card = byId('rollout');
  const split = rollout.split || {};
  const canary = rollout.canary;
  card.dataset.split = JSON.stringify(split);
  card.dataset.canary = canary ? String(canary.version) : '';
  const pill = byId('rollout-state');
  pill.textContent = canary
    ? `canary v${canary.version} at ${percent(canary.weight, 0)}`
    : Object.keys(split).length ? `serving ${splitText(split)}` : 'not set';
  pill.className = `pill ${canary ? 'status-started' : 'muted'}`;
  byId('rollout-split').replaceChildren(...splitBar(split, canary));
  if (versions) fillCanaryVersions(versions, split, canary);
  renderButtons();
  byId('decisions').replaceChildren(...(rollout.decisions.length
    ? rollout.decisions.map(decisionRow)
    : [h('li', { class: 'empty' }, 'No decision yet.')]));
}

function renderButtons() {
  const canary = state && state.canary;
  const promote = byId('canary-promote');
  const rollback = byId('canary-rollback');
  byId('canary-start').disabled = !state;
  promote.disabled = !canary;
  rollback.disabled = !canary;
  promote.textContent = canary ? `Promote v${canary.version}` : 'Promote';
  rollback.textContent = canary ? `Roll back to v${canary.base}` : 'Roll back';
}

function splitBar(split, canary) {
  const parts = Object.entries(split).sort((a, b) => b[1] - a[1]);
  if (!parts.length) return [h('span', { class: 'split-empty' }, `${ALIAS} is not set: predictions use the latest version`)];
  return parts.map(([v, w]) => {
    const role = canary ? (Number(v) === canary.version ? 'canary' : 'base') : 'base';
    const segment = h('span', { class: `split-part ${role}`, title: `v${v}: ${percent(w, 1)}` }, `v${v} ${percent(w, 0)}`);
    segment.style.flexGrow = String(w); // CSSOM, not a style attribute: the CSP forbids inline styles
    return segment;
  });
}

function fillCanaryVersions(versions, split, canary) {
  const select = byId('canary-version');
  const keep = select.value;
  const served = Object.keys(split).length === 1 ? Number(Object.keys(split)[0]) : null;
  const choices = [...versions].sort((a, b) => b - a).filter((v) => v !== served && (!canary || v !== canary.base));
  const values = choices.map(String);
  if (select.options.length === values.length && [...select.options].every((o, i) => o.value === values[i])) return;
  select.replaceChildren(...(choices.length
    ? choices.map((v) => h('option', { value: String(v) }, `v${v}`))
    : [h('option', { value: '' }, 'no other version')]));
  select.value = values.includes(keep) ? keep : canary ? String(canary.version) : values[0] || '';
}

function decisionRow(d) {
  return h('li', { class: 'decision', dataset: { action: d.action, version: String(d.version ?? '') } },
    h('span', { class: `pill action-${d.action}` }, d.action),
    h('span', { class: 'decision-what' }, d.version != null ? `v${d.version}` : '', h('span', { class: 'muted' }, ` on ${d.alias}`),
      ' → ', splitText(d.split || {})),
    h('span', { class: 'muted decision-when', title: d.time }, `${ago(d.time)} · ${d.actor}`),
    h('span', { class: 'decision-reason' }, d.reason || h('span', { class: 'muted' }, 'no reason given')));
}
