// The dashboard's entry point: tabs from the URL's hash, and the views they show.
import { byId } from './dom.js';
import { hideJobs, initJobs, showJobs } from './jobs.js';
import { initDraw, showDraw } from './draw.js';
import { initInspect, showInspect } from './inspect.js';
import { initModels, refreshModels } from './models.js';
import { hideMonitor, initMonitor, showMonitor } from './monitor.js';
import { initToken } from './token.js';

const VIEWS = {
  models: { show: refreshModels },
  training: { show: showJobs, hide: hideJobs },
  draw: { show: showDraw },
  inspect: { show: showInspect },
  monitor: { show: showMonitor, hide: hideMonitor },
};
let current = null;

function route() {
  const name = location.hash.slice(1) in VIEWS ? location.hash.slice(1) : 'models';
  if (name === current) return;
  if (current && VIEWS[current].hide) VIEWS[current].hide();
  current = name;
  for (const id of Object.keys(VIEWS)) byId(id).hidden = id !== name;
  for (const tab of document.querySelectorAll('[data-tab]')) {
    const active = tab.dataset.tab === name;
    tab.classList.toggle('active', active);
    if (active) tab.setAttribute('aria-current', 'page'); else tab.removeAttribute('aria-current');
  }
  // body[data-view] names the view once its data is shown (tests wait for it).
  delete document.body.dataset.view;
  Promise.resolve(VIEWS[name].show()).finally(() => {
    if (current === name) document.body.dataset.view = name;
  });
}

/** Keep --topbar-height (the CSS's scroll-padding-top) equal to the sticky bar's height. */
function trackTopbar() {
  const bar = document.querySelector('.topbar');
  const set = () => document.documentElement.style.setProperty('--topbar-height', `${bar.offsetHeight}px`);
  set(); // before the browser scrolls to the URL's fragment
  new ResizeObserver(set).observe(bar);
}

trackTopbar();
initToken();
initModels();
initJobs();
initDraw();
initInspect();
initMonitor();
// A new version (a job finished, an alias moved) shows in the other views when next shown.
document.addEventListener('registry-changed', () => { if (current === 'models') refreshModels(); });
window.addEventListener('hashchange', route);
route();
document.body.dataset.ready = 'true';
