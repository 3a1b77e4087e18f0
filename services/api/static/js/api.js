// The HTTP API, as the page uses it: JSON in and out, errors as ApiError with the server's message.
import { forgetToken, getPredictToken, requireToken } from './token.js';

/** An error answer of the API: `status`, the server's `message`, and per-field `errors`. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.errors = (body && body.errors) || null;
  }
}

const enc = encodeURIComponent;

async function send(method, path, body, authorization) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (authorization) headers.Authorization = `Bearer ${authorization}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return { response, data: null };
  const data = await response.json().catch(() => null);
  return { response, data };
}

/**
 * Call the API. `auth`: a write that needs the API token (asked for when missing or refused,
 * then retried once). `predict`: sends the predict token when this tab has one.
 */
async function request(method, path, { body, auth = false, predict = false } = {}) {
  let token = auth ? await requireToken() : (predict ? getPredictToken() : '');
  let { response, data } = await send(method, path, body, token);
  if (auth && (response.status === 401 || response.status === 403)) {
    forgetToken();
    token = await requireToken(`The server refused the token (${response.status}): enter it again.`);
    ({ response, data } = await send(method, path, body, token));
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const api = {
  models: () => request('GET', '/v1/models'),
  model: (m) => request('GET', `/v1/models/${enc(m)}`),
  version: (m, v) => request('GET', `/v1/models/${enc(m)}/versions/${v}`),
  setAlias: (m, alias, version) =>
    request('PUT', `/v1/models/${enc(m)}/aliases/${enc(alias)}`, { body: { version }, auth: true }),
  datasets: () => request('GET', '/v1/datasets'),
  jobs: (limit = 15) => request('GET', `/v1/jobs?limit=${limit}`),
  job: (id) => request('GET', `/v1/jobs/${enc(id)}`),
  submitJob: (spec) => request('POST', '/v1/jobs', { body: spec, auth: true }),
  cancelJob: (id) => request('DELETE', `/v1/jobs/${enc(id)}`, { auth: true }),
  eventsUrl: (id) => `/v1/jobs/${enc(id)}/events`,
  /** Classify images (lists of 784 pixels 0–255) with version `v`, or the default one when v is ''. */
  predict: (m, v, instances) =>
    request('POST', v ? `/v1/models/${enc(m)}/versions/${v}:predict` : `/v1/models/${enc(m)}:predict`, {
      body: { instances },
      predict: true,
    }),
  evaluate: (m, v, body) =>
    request('POST', `/v1/models/${enc(m)}/versions/${v}:evaluate`, { body, predict: true }),
};
