// Models view: each version's metrics, aliases, share of a split and lineage; promote to production or roll back.
import { api } from './api.js';
import { ago, byId, describeError, duration, h, percent, toast } from './dom.js';
import { fillModels } from './pickers.js';

const ALIAS = 'production';
const rollbacks = new Map(); // model → where production pointed before this tab last moved it

export function initModels() {
  const select = byId('models-select');
  select.addEventListener('change', () => {
    sessionStorage.setItem('mnist.model', select.value);
    render();
  });
  byId('models-refresh').addEventListener('click', refreshModels);
}

/** Reload the model list and the selected model's versions. */
export async function refreshModels() {
  const select = byId('models-select');
  try {
    const remembered = sessionStorage.getItem('mnist.model');
    const names = await fillModels(select);
    if (remembered && names.includes(remembered)) select.value = remembered;
    await render();
  } catch (err) {
    byId('versions').replaceChildren(h('p', { class: 'empty error' }, describeError(err)));
  }
}

async function render() {
  const model = byId('models-select').value;
  const list = byId('versions');
  const banner = byId('models-alias');
  if (!model) {
    banner.hidden = true;
    list.replaceChildren(h('div', { class: 'empty' },
      h('p', {}, 'No model in the registry yet.'),
      h('a', { href: '#training', class: 'button primary' }, 'Train one')));
    return;
  }
  const info = await api.model(model);
  const details = await Promise.all(info.versions.map((v) => api.version(model, v.version).catch(() => null)));
  const production = info.aliases[ALIAS] ?? null;
  const split = (info.splits || {})[ALIAS] || null; // {"4": 0.9, "5": 0.1} when production is a split
  renderBanner(banner, model, production, info.latest, split);
  const cards = info.versions.map((v, i) => versionCard(model, v, details[i], production, info.latest, split));
  list.replaceChildren(...cards.reverse());
}

function renderBanner(banner, model, production, latest, split) {
  banner.hidden = false;
  const back = rollbacks.get(model);
  banner.replaceChildren(
    production && split
      ? h('span', {}, h('b', {}, ALIAS), ' → ', h('b', { id: 'production-split' }, shares(split)),
        h('span', { class: 'muted' }, ' · a split: predictions that name no version are shared so; the Monitor view changes it'))
      : production
        ? h('span', {}, h('b', {}, ALIAS), ' → ', h('b', { id: 'production-version' }, `v${production}`),
          h('span', { class: 'muted' }, ' · predictions that name no version use it'))
        : h('span', {}, 'No ', h('b', {}, ALIAS), ' alias: predictions use the latest version',
          latest ? ` (v${latest})` : '', '.'),
  );
  if (back && back !== production) {
    banner.append(h('button', { class: 'small', id: 'rollback', onclick: () => promote(model, back) }, `Roll back to v${back}`));
  }
}

// "v4 90% · v5 10%": a split's versions and their shares of the traffic.
function shares(split) {
  return Object.entries(split).map(([version, weight]) => `v${version} ${Math.round(weight * 100)}%`).join(' · ');
}

function versionCard(model, v, detail, production, latest, split) {
  const share = split ? split[String(v.version)] ?? null : null;
  const m = v.metrics || {};
  const lineage = (detail && detail.lineage) || {};
  const config = lineage.config || {};
  const dataset = v.dataset || lineage.dataset || {};
  const isProduction = production === v.version;
  const action = isProduction
    ? h('span', { class: 'serving' }, 'serving production')
    : h('button', { class: production && v.version < production ? 'small' : 'small primary', onclick: () => promote(model, v.version) },
      production && v.version < production ? 'Roll back to this' : 'Promote to production');
  const sizes = detail && detail.architecture && detail.architecture.sizes;
  const length = config.epochs ? `${config.epochs} epochs` : config.iterations ? `${config.iterations} iterations` : null;
  const settings = [config.optimizer, config.learning_rate != null && `lr ${config.learning_rate}`,
    config.batch_size != null && (config.batch_size ? `batch ${config.batch_size}` : 'full batch'), length]
    .filter(Boolean).join(' · ');
  return h('article', {
    class: `version-card${isProduction ? ' is-production' : ''}`,
    dataset: { version: String(v.version), aliases: v.aliases.join(','), share: share == null ? '' : String(share) },
  },
  h('header', { class: 'version-head' },
    h('span', { class: 'version-number' }, `v${v.version}`),
    v.aliases.map((a) => h('span', { class: `alias${a === ALIAS ? ' production' : ''}` }, a)),
    share != null ? h('span', { class: 'tag share' }, `${Math.round(share * 100)}% of ${ALIAS}`) : null,
    v.version === latest ? h('span', { class: 'tag' }, 'latest') : null,
    h('span', { class: 'muted', title: v.created_at }, ago(v.created_at)),
    h('span', { class: 'spacer' }),
    action),
  h('dl', { class: 'metrics' },
    metric('Test accuracy', percent(m.test_accuracy), 'strong'),
    metric('Validation', percent(m.val_accuracy)),
    metric('Train', percent(m.train_accuracy)),
    metric('Training time', duration(m.seconds))),
  h('dl', { class: 'lineage' },
    fact('Job', v.job_id ? h('span', { class: 'mono', title: v.job_id }, v.job_id.slice(0, 8)) : '—'),
    fact('Dataset', dataset.name || '—', dataset.digest
      ? h('span', { class: 'mono muted', title: dataset.digest }, ` ${dataset.digest.replace('sha256:', '').slice(0, 12)}…`)
      : null),
    fact('Recipe', lineage.recipe || 'none'),
    fact('Network', sizes ? sizes.join('–') : '—'),
    fact('Training', settings || '—')));
}

function metric(name, value, kind = '') {
  return h('div', { class: `metric ${kind}` }, h('dt', {}, name), h('dd', {}, value));
}

function fact(name, ...value) {
  return h('div', {}, h('dt', {}, name), h('dd', {}, ...value));
}

async function promote(model, version) {
  try {
    const answer = await api.setAlias(model, ALIAS, version);
    if (answer.previous && answer.previous !== version) rollbacks.set(model, answer.previous);
    toast(`${ALIAS}: ${answer.previous ? `v${answer.previous}` : 'none'} → v${answer.version}`, 'ok');
    document.dispatchEvent(new CustomEvent('registry-changed'));
    await render();
  } catch (err) {
    toast(describeError(err), 'error');
  }
}
