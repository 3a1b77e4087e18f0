// Inspect view: evaluate one version on a dataset split (POST …/versions/<v>:evaluate) and show
// its accuracy, confusion matrix and a grid of the images it got wrong.
import { api } from './api.js';
import { byId, describeError, digitCanvas, duration, h, percent } from './dom.js';
import { fillDatasets, fillModels, fillVersions } from './pickers.js';
import { SIZE } from './preprocess.js';

export function initInspect() {
  const model = byId('inspect-model');
  model.addEventListener('change', () => fillVersions(byId('inspect-version'), model.value));
  byId('inspect-form').addEventListener('submit', evaluate);
}

/** Called when the view is shown: fresh model, version and dataset lists. */
export async function showInspect() {
  try {
    await Promise.all([fillModels(byId('inspect-model')), fillDatasets(byId('inspect-dataset'))]);
    await fillVersions(byId('inspect-version'), byId('inspect-model').value);
  } catch (err) {
    showError(describeError(err));
  }
}

function showError(text) {
  const error = byId('inspect-error');
  error.textContent = text;
  error.hidden = !text;
}

async function evaluate(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const f = new FormData(form);
  const button = form.querySelector('button[type=submit]');
  showError('');
  if (!f.get('model') || !f.get('version')) return showError('Choose a model and a version first.');
  button.disabled = true;
  button.textContent = 'Evaluating…';
  try {
    const body = { dataset: f.get('dataset'), split: f.get('split'), limit: Number(f.get('limit')) };
    render(await api.evaluate(f.get('model'), f.get('version'), body));
  } catch (err) {
    showError(describeError(err));
  } finally {
    button.disabled = false;
    button.textContent = 'Evaluate';
  }
}

function render(r) {
  const classes = r.dataset.classes;
  const result = byId('inspect-result');
  result.hidden = false;
  result.dataset.accuracy = String(r.accuracy);
  byId('inspect-summary').replaceChildren(
    tile('Accuracy', percent(r.accuracy, 2), `${r.model} v${r.model_version}`),
    tile('Images', r.count.toLocaleString(), `${r.dataset.name} · ${r.dataset.split}`),
    tile('Misclassified', r.misclassified_count.toLocaleString(), r.misclassified_count > r.misclassified.length ? `first ${r.misclassified.length} shown` : ''),
    tile('Time', duration(r.seconds), 'to classify'),
  );
  byId('confusion').replaceChildren(...confusion(r.confusion_matrix, r.per_class_accuracy, classes));
  byId('miss-count').textContent = `(${r.misclassified_count.toLocaleString()})`;
  const grid = byId('misclassified');
  grid.replaceChildren(...(r.misclassified.length
    ? r.misclassified.map((m) => digit(m, classes))
    : [h('p', { class: 'empty' }, 'None: every image was classified correctly.')]));
}

function tile(name, value, note) {
  return h('div', { class: 'tile' }, h('div', { class: 'tile-name' }, name), h('div', { class: 'tile-value' }, value),
    h('div', { class: 'tile-note' }, note));
}

function confusion(matrix, perClass, classes) {
  const short = (c) => (c.length > 3 ? c.slice(0, 3) : c);
  const head = h('tr', {}, h('th', { class: 'corner' }, 'true / pred'),
    classes.map((c) => h('th', { title: c }, short(c))), h('th', {}, 'acc.'));
  const rows = matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    return h('tr', {}, h('th', { title: classes[i] }, short(classes[i])),
      row.map((n, j) => {
        const cell = h('td', { title: `${classes[i]} classified as ${classes[j]}: ${n}` }, n ? String(n) : '');
        const share = total ? n / total : 0;
        if (n) cell.style.backgroundColor = i === j
          ? `rgba(37, 99, 235, ${(0.12 + 0.6 * share).toFixed(3)})`
          : `rgba(220, 38, 38, ${(0.12 + 0.8 * Math.min(1, share * 4)).toFixed(3)})`;
        if (i === j && share > 0.6) cell.classList.add('on-dark');
        return cell;
      }),
      h('td', { class: 'class-acc' }, percent(perClass[i], 0)));
  });
  return [h('thead', {}, head), h('tbody', {}, rows)];
}

function digit(m, classes) {
  const canvas = digitCanvas(Uint8Array.from(atob(m.pixels), (c) => c.charCodeAt(0)), SIZE);
  const confidence = m.probabilities ? percent(m.probabilities[m.predicted], 0) : '';
  return h('figure', { class: 'digit', title: `#${m.index}: a ${classes[m.label]} classified as ${classes[m.predicted]} (${confidence})` },
    canvas,
    h('figcaption', {}, h('span', { class: 'truth' }, classes[m.label]), ' → ', h('span', { class: 'wrong' }, classes[m.predicted])));
}
