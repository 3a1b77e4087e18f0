// The HTTP API, as the page uses it: JSON in and out, errors as ApiError with the server's message.
import { askToken, forgetToken, forgetTokenFor, requireToken, tokenFor } from './token.js';

/** An error answer of the API: `status`, the server's `message`, and per-field `errors`. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.errors = (body && body.errors) || null;
  }
}

const enc = encodeURIComponent;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Times a job's event stream is asked for again after a 503 (Retry-After apart) before giving up.
const BUSY_RETRIES = 5;

/** Why the dialog opens when the server refuses a request of `kind` (401: no token, 403: wrong). */
function refusal(kind, status) {
  const wrong = status === 403 ? `The server refused the token (${status}): ` : '';
  if (kind === 'predict') return `${wrong || 'Predictions need a token: '}enter the predict token.`;
  if (kind === 'evaluate') return `${wrong || 'Evaluations need a token: '}enter the predict token or the API token.`;
  return `${wrong || 'This server guards its reads (MNIST_PREDICT_TOKEN): '}enter the predict token or the API token.`;
}

function headers(token, json) {
  const h = { Accept: 'application/json' };
  if (json) h['Content-Type'] = 'application/json';
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function send(method, path, body, authorization) {
  const response = await fetch(path, {
    method,
    headers: headers(authorization, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return { response, data: null };
  const data = await response.json().catch(() => null);
  return { response, data };
}

/**
 * Call the API with the token of `kind` (token.js): `write` needs the API token (asked for when
 * missing); `read`, `predict` and `evaluate` send the tab's token when it has one. A refused
 * token (401, 403) opens the dialog with the reason, and the request is retried once.
 */
async function request(method, path, { body, kind = 'read' } = {}) {
  let token = kind === 'write' ? await requireToken() : tokenFor(kind);
  let { response, data } = await send(method, path, body, token);
  if (response.status === 401 || response.status === 403) {
    if (kind === 'write') {
      forgetToken();
      token = await requireToken(`The server refused the token (${response.status}): enter it again.`);
    } else {
      if (response.status === 403) forgetTokenFor(kind);
      token = await askToken(kind, refusal(kind, response.status));
    }
    ({ response, data } = await send(method, path, body, token));
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Yield [event, data] of a Server-Sent Events body; a `retry:` field is yielded as ['retry', ms]. */
async function* sse(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let name = 'message';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === '') {
        if (data.length) yield [name, JSON.parse(data.join('\n'))];
        name = 'message';
        data = [];
      } else if (line.startsWith('retry:')) {
        yield ['retry', Number(line.slice(6))];
      } else if (line.startsWith('event:')) {
        name = line.slice(6).trim();
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).trimStart());
      } // a comment (": keep-alive") is skipped
    }
  }
}

/**
 * Follow job `id`'s events, with the read token: EventSource cannot send one. `on(event, data)`
 * gets each `progress` and the last `end` (or the server's `error`); a dropped stream is opened
 * again after the stream's `retry`, like EventSource, and a 503 after its Retry-After (a few
 * times). Another error answer ends it with on('error', {message}). Returns {close()}.
 */
function followJob(id, on) {
  const controller = new AbortController();
  let closed = false;
  const finish = (name, data) => {
    if (closed) return;
    closed = true;
    on(name, data);
  };
  (async () => {
    let retry = 2000;
    let asked = false;
    let busy = 0; // 503s in a row: the server has no stream to spare right now
    while (!closed) {
      let response;
      try {
        response = await fetch(`/v1/jobs/${enc(id)}/events`, {
          headers: { ...headers(tokenFor('read')), Accept: 'text/event-stream' },
          signal: controller.signal,
          cache: 'no-store',
        });
      } catch (err) {
        if (closed) return;
        await sleep(retry); // no connection: try again, as EventSource does
        continue;
      }
      if ((response.status === 401 || response.status === 403) && !asked) {
        asked = true;
        if (response.status === 403) forgetTokenFor('read');
        try {
          await askToken('read', refusal('read', response.status));
        } catch (err) {
          finish('error', { message: err.message });
          return;
        }
        continue;
      }
      if (response.status === 503 && busy < BUSY_RETRIES) {
        busy += 1;
        const after = Number(response.headers.get('Retry-After'));
        await sleep(after > 0 ? after * 1000 : retry);
        continue;
      }
      if (!response.ok) {
        const data = await response.json().catch(() => null);
        finish('error', { message: (data && data.message) || `HTTP ${response.status}` });
        return;
      }
      busy = 0;
      try {
        for await (const [name, data] of sse(response.body)) {
          if (closed) return;
          if (name === 'retry') retry = data || retry;
          else if (name === 'end' || name === 'error') return finish(name, data);
          else on(name, data);
        }
      } catch (err) {
        if (closed) return; // aborted by close()
      }
      await sleep(retry); // the stream broke before the job's end: open it again
    }
  })();
  return {
    close() {
      closed = true;
      controller.abort();
    },
  };
}

export const api = {
  models: () => request('GET', '/v1/models'),
  model: (m) => request('GET', `/v1/models/${enc(m)}`),
  version: (m, v) => request('GET', `/v1/models/${enc(m)}/versions/${v}`),
  setAlias: (m, alias, version) =>
    request('PUT', `/v1/models/${enc(m)}/aliases/${enc(alias)}`, { body: { version }, kind: 'write' }),
  datasets: () => request('GET', '/v1/datasets'),
  jobs: (limit = 15) => request('GET', `/v1/jobs?limit=${limit}`),
  job: (id) => request('GET', `/v1/jobs/${enc(id)}`),
  submitJob: (spec) => request('POST', '/v1/jobs', { body: spec, kind: 'write' }),
  cancelJob: (id) => request('DELETE', `/v1/jobs/${enc(id)}`, { kind: 'write' }),
  followJob,
  /** Classify images (lists of 784 pixels 0–255) with version `v`, or the default one when v is ''. */
  predict: (m, v, instances) =>
    request('POST', v ? `/v1/models/${enc(m)}/versions/${v}:predict` : `/v1/models/${enc(m)}:predict`, {
      body: { instances },
      kind: 'predict',
    }),
  monitor: (m) => request('GET', `/v1/models/${enc(m)}/monitor`),
  /** The newest `limit` logged predictions of a model, with their pixels. */
  predictions: (m, limit) => request('GET', `/v1/models/${enc(m)}/predictions?limit=${limit}&pixels=true`),
  rollout: (m, alias) => request('GET', `/v1/models/${enc(m)}/rollout?alias=${enc(alias)}`),
  /** Decide a rollout: {action: canary, version, weight, reason} | {action: promote|rollback, reason}. */
  decide: (m, body) => request('POST', `/v1/models/${enc(m)}/rollout`, { body, kind: 'write' }),
  evaluate: (m, v, body) =>
    request('POST', `/v1/models/${enc(m)}/versions/${v}:evaluate`, { body, kind: 'evaluate' }),
};
