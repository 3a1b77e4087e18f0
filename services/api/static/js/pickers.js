// The model, version and dataset <select>s shared by the Draw and Inspect views.
import { api } from './api.js';
import { h, percent } from './dom.js';

/** Fill `select` with the registry's models, keeping its choice if it still exists; return the names. */
export async function fillModels(select) {
  const models = await api.models();
  const names = models.map((m) => m.name).sort();
  const keep = select.value;
  select.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
  if (!names.length) select.append(h('option', { value: '' }, 'no model yet'));
  select.value = names.includes(keep) ? keep : (names.includes('mnist') ? 'mnist' : names[0] || '');
  return names;
}

/**
 * Fill `select` with the versions of `model`, newest first. With `withDefault`, the first option
 * (value '') is the version the service answers with: production when set, else the latest.
 */
export async function fillVersions(select, model, { withDefault = false } = {}) {
  const keep = select.value;
  if (!model) {
    select.replaceChildren(h('option', { value: '' }, '—'));
    return;
  }
  const info = await api.model(model);
  const production = info.aliases.production;
  const options = [...info.versions].reverse().map((v) => {
    const tags = [v.aliases.length ? v.aliases.join(', ') : '', percent(v.metrics.test_accuracy ?? v.metrics.val_accuracy)]
      .filter((t) => t && t !== '—');
    return h('option', { value: String(v.version) }, `v${v.version}${tags.length ? ` · ${tags.join(' · ')}` : ''}`);
  });
  if (withDefault) {
    const label = production ? `production (v${production})` : `latest (v${info.latest})`;
    options.unshift(h('option', { value: '' }, label));
  }
  select.replaceChildren(...options);
  const values = options.map((o) => o.value);
  select.value = values.includes(keep) ? keep : values[0];
}

/**
 * Fill `select` with the datasets. Those this server cannot read are disabled, unless
 * `allowMissing` (a training job: a worker on another host may have the files).
 */
export async function fillDatasets(select, { allowMissing = false } = {}) {
  const keep = select.value;
  const datasets = await api.datasets();
  select.replaceChildren(...datasets.map((d) => h('option', {
    value: d.name,
    disabled: !d.available && !allowMissing,
    title: d.available ? d.description || d.source || '' : d.how_to_get || 'not available',
  }, d.available ? d.name : `${d.name} (not on this server)`)));
  const usable = datasets.filter((d) => d.available || allowMissing).map((d) => d.name);
  const fallback = datasets.find((d) => d.default && d.available)?.name || usable[0] || '';
  select.value = usable.includes(keep) ? keep : fallback;
  return datasets;
}
