// Talking to ten serve's API from the bare domain (same origin). The token lives in
// sessionStorage only: closing the tab signs out.

const KEY = 'tenement-token';

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set token(t) { t ? sessionStorage.setItem(KEY, t) : sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.token}`, ...extra };
}

// A request the server has not answered within this long is reported, so a hung server does
// not leave a stale table looking current. (Longer than any wait the API itself may do.)
const ANSWER_WITHIN_MS = 40000;

async function fetchAnswered(path, options) {
  try {
    return await fetch(path, { ...options, signal: AbortSignal.timeout(ANSWER_WITHIN_MS) });
  } catch (e) {
    if (e.name === 'TimeoutError') throw new ApiError(0, `the server did not answer within ${ANSWER_WITHIN_MS / 1000} s`);
    throw e;
  }
}

export async function api(method, path, body) {
  const res = await fetchAnswered(path, {
    method,
    headers: headers(body ? { 'Content-Type': 'application/json' } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new ApiError(res.status, data?.error ?? `${res.status} ${res.statusText}`);
  return data;
}

export async function metricsText() {
  const res = await fetchAnswered('/metrics', { headers: headers() });
  if (!res.ok) throw new ApiError(res.status, `metrics: ${res.status}`);
  return res.text();
}

// Server-Sent Events over fetch (EventSource cannot send an Authorization header).
// Calls onLine for every `log` event until the signal aborts.
export async function follow(path, onLine, signal) {
  const res = await fetch(path, { headers: headers(), signal });
  if (!res.ok) throw new ApiError(res.status, `${res.status}`);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('');
      if (event.includes('event: log') && data) onLine(JSON.parse(data));
    }
  }
}

export function bytes(n) {
  if (n == null) return '–';
  if (n < 1 << 20) return `${(n / 1024).toFixed(0)} KB`;
  if (n < 1 << 30) return `${(n / 1048576).toFixed(1)} MB`;
  return `${(n / 1073741824).toFixed(2)} GB`;
}

export function uptime(sinceMs) {
  if (!sinceMs) return '–';
  const s = Math.max(0, Math.floor((Date.now() - sinceMs) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}
