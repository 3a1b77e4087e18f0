// The Monitor view's live feed: the newest logged predictions (GET …/predictions?pixels=true),
// each image drawn on a 28×28 canvas with the label and the version that answered it.
import { byId, digitCanvas, h, percent } from './dom.js';

let newest = null; // entry id of the newest prediction shown: an unchanged log is not redrawn

/** Show `predictions` (newest first, each with its 784 pixels). */
export function renderFeed(predictions) {
  const feed = byId('monitor-feed');
  const top = predictions.length ? predictions[0].entry : '';
  const note = byId('feed-note');
  note.textContent = predictions.length ? `(newest ${predictions.length})` : '';
  if (top === newest && feed.childElementCount) return;
  newest = top;
  feed.replaceChildren(...(predictions.length
    ? predictions.map(item)
    : [h('p', { class: 'empty' }, 'Nothing logged yet. The server logs a sample of its predictions when MNIST_LOG_SAMPLE is above 0.')]));
}

function item(p) {
  const confidence = percent(p.probabilities[p.label], 0);
  const when = new Date(p.time).toLocaleTimeString();
  return h('figure', {
    class: `digit feed-item${p.kind === 'shadow' ? ' shadow' : ''}`,
    dataset: { entry: p.entry, version: String(p.version), label: String(p.label), kind: p.kind },
    title: `${when} · request ${p.request_id} · v${p.version} (${p.kind}) read ${p.label} at ${confidence}`,
  },
  digitCanvas(p.pixels),
  h('figcaption', {}, h('b', {}, String(p.label)), h('span', { class: 'muted' }, ` v${p.version}${p.kind === 'shadow' ? ' shadow' : ''}`)));
}
