// The bearer tokens, asked for once in a small dialog and kept in sessionStorage (this tab only).
import { byId } from './dom.js';

const KEY = 'mnist.token';
const PREDICT_KEY = 'mnist.predictToken';

let waiting = [];  // {resolve, reject} of requireToken() calls waiting for the dialog

/** Return the API token of this tab, or ''. */
export const getToken = () => sessionStorage.getItem(KEY) || '';

/** Return the predict token of this tab, or ''. */
export const getPredictToken = () => sessionStorage.getItem(PREDICT_KEY) || '';

/** Drop the API token (after the server refused it). */
export function forgetToken() {
  sessionStorage.removeItem(KEY);
  renderButton();
}

/** Return the API token, asking for it first when there is none (or `reason` says it failed). */
export function requireToken(reason = '') {
  const token = getToken();
  if (token && !reason) return Promise.resolve(token);
  return new Promise((resolve, reject) => {
    waiting.push({ resolve, reject });
    openDialog(reason);
  });
}

function openDialog(reason = '') {
  const dialog = byId('token-dialog');
  byId('token-input').value = getToken();
  byId('predict-token-input').value = getPredictToken();
  const message = byId('token-reason');
  message.textContent = reason;
  message.hidden = !reason;
  if (!dialog.open) dialog.showModal();
  byId('token-input').focus();
}

function settle(ok) {
  const pending = waiting;
  waiting = [];
  for (const { resolve, reject } of pending) {
    if (ok && getToken()) resolve(getToken());
    else reject(new Error('no API token: the action needs one'));
  }
}

function renderButton() {
  const button = byId('token-button');
  const set = Boolean(getToken());
  button.textContent = set ? 'Token set' : 'Set token';
  button.classList.toggle('is-set', set);
  button.title = set ? 'The API token is kept for this tab: click to change it' : 'Writes need the API token';
}

/** Wire the header button and the dialog. */
export function initToken() {
  const dialog = byId('token-dialog');
  byId('token-button').addEventListener('click', () => openDialog());
  byId('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = byId('token-input').value.trim();
    const predict = byId('predict-token-input').value.trim();
    if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
    if (predict) sessionStorage.setItem(PREDICT_KEY, predict); else sessionStorage.removeItem(PREDICT_KEY);
    dialog.close();
    renderButton();
    settle(true);
  });
  byId('token-cancel').addEventListener('click', () => dialog.close());
  byId('token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(PREDICT_KEY);
    dialog.close();
    renderButton();
  });
  // Closed without saving (Cancel, Escape, Forget): whoever waited for a token gets an error.
  dialog.addEventListener('close', () => settle(false));
  renderButton();
}
