// The bearer tokens, asked for in a small dialog and kept in sessionStorage (this tab only).
//
// Which token a request carries depends on its kind, as the server's routes take them
// (docs/api.md): a write the API token; a prediction the predict token (never the API token);
// a read or an evaluation the predict token, else the API token (the server takes either).
import { byId } from './dom.js';

const KEY = 'mnist.token';
const PREDICT_KEY = 'mnist.predictToken';

let waiting = [];  // {kind, resolve, reject} of askToken() calls waiting for the dialog

/** Return the API token of this tab, or ''. */
export const getToken = () => sessionStorage.getItem(KEY) || '';

/** Return the predict token of this tab, or ''. */
export const getPredictToken = () => sessionStorage.getItem(PREDICT_KEY) || '';

/** Return the token a request of `kind` (write, predict, read, evaluate) carries, or ''. */
export function tokenFor(kind) {
  if (kind === 'write') return getToken();
  if (kind === 'predict') return getPredictToken();
  return getPredictToken() || getToken();
}

/** Drop the API token (after the server refused it). */
export function forgetToken() {
  sessionStorage.removeItem(KEY);
  renderButton();
}

/** Drop the token that a request of `kind` carried (after the server refused it). */
export function forgetTokenFor(kind) {
  if (kind === 'write' || (kind !== 'predict' && !getPredictToken())) sessionStorage.removeItem(KEY);
  else sessionStorage.removeItem(PREDICT_KEY);
  renderButton();
}

/** Return the API token, asking for it first when there is none (or `reason` says it failed). */
export function requireToken(reason = '') {
  const token = getToken();
  if (token && !reason) return Promise.resolve(token);
  return askToken('write', reason);
}

/** Open the dialog (saying `reason`); resolve with the token of `kind` once saved, else reject. */
export function askToken(kind, reason = '') {
  return new Promise((resolve, reject) => {
    waiting.push({ kind, resolve, reject });
    openDialog(reason, kind);
  });
}

function openDialog(reason = '', kind = 'write') {
  const dialog = byId('token-dialog');
  const message = byId('token-reason');
  if (!dialog.open) {
    byId('token-input').value = getToken();
    byId('predict-token-input').value = getPredictToken();
    message.textContent = reason;
  } else if (reason && !message.textContent.includes(reason)) {
    // Several requests refused at once (a view's reads): one dialog says every reason.
    message.textContent = message.textContent ? `${message.textContent} ${reason}` : reason;
  }
  message.hidden = !message.textContent;
  if (!dialog.open) {
    dialog.showModal();
    byId(kind === 'write' ? 'token-input' : 'predict-token-input').focus();
  }
}

function settle(ok) {
  const pending = waiting;
  waiting = [];
  for (const { kind, resolve, reject } of pending) {
    const token = tokenFor(kind);
    if (ok && token) resolve(token);
    else reject(new Error(kind === 'write' ? 'no API token: the action needs one' : 'no token: the server asks for one'));
  }
}

function renderButton() {
  const button = byId('token-button');
  const set = Boolean(getToken() || getPredictToken());
  button.textContent = set ? 'Token set' : 'Set token';
  button.classList.toggle('is-set', set);
  button.title = set ? 'A token is kept for this tab: click to change it' : 'Writes need the API token';
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
  dialog.addEventListener('close', () => {
    byId('token-reason').textContent = '';
    settle(false);
  });
  renderButton();
}
