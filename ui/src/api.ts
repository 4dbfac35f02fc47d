// The one way the UI talks to the node: JSON over /api/v1 with the session cookie and the CSRF
// header on mutations. Errors become ApiError with a sentence a person can act on.

export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string) {
    super(message);
  }
}

let csrf: string | null = null;
export function setCsrf(token: string | null) {
  csrf = token;
}

function cookieCsrf(): string | null {
  const m = document.cookie.match(/(?:^|;\s*)cairn_csrf=([^;]+)/);
  return m ? m[1] : null;
}

/** Words for an error, from the API's own message plus what the status means. */
export function explain(e: unknown): string {
  if (e instanceof ApiError) {
    switch (e.status) {
      case 0:
        return 'Cannot reach the node. Check the network and try again.';
      case 401:
        return e.code === 'unauthorized' && /wrong/.test(e.message)
          ? 'Wrong user name or password.'
          : 'Your session has ended. Please log in again.';
      case 403:
        return `Not allowed: ${e.message}.`;
      case 404:
        return `Not found: ${e.message}.`;
      case 409:
        return `Conflict: ${e.message}.`;
      case 429:
        return `Too many attempts: ${e.message}.`;
      case 507:
        return `Not enough space: ${e.message}.`;
      default:
        return e.status >= 500 ? `The node could not do this: ${e.message}.` : `${e.message}.`;
    }
  }
  return String(e);
}

export let onUnauthorized: () => void = () => {};
export function setOnUnauthorized(f: () => void) {
  onUnauthorized = f;
}

export async function api<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET') {
    const t = csrf ?? cookieCsrf();
    if (t) headers['X-CSRF-Token'] = t;
  }
  let r: Response;
  try {
    r = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
  } catch {
    throw new ApiError(0, 'unreachable', 'network error');
  }
  if (r.status === 204) return undefined as T;
  const text = await r.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) {
    const err = data?.error ?? { code: 'http_' + r.status, message: r.statusText || 'request failed' };
    if (r.status === 401 && path !== '/auth/login') onUnauthorized();
    throw new ApiError(r.status, err.code, err.message);
  }
  return data as T;
}

export interface Task {
  id: number;
  action: string;
  target: string;
  state: 'running' | 'succeeded' | 'failed';
  progress: number | null;
  started_unix: number;
  finished_unix: number | null;
  error: { code: string; message: string } | null;
}

/** Poll a task until it ends; `onTick` sees every state. Bounded to 1 hour. */
export async function waitTask(id: number, onTick: (t: Task) => void): Promise<Task> {
  for (let i = 0; i < 3600 * 2; i++) {
    const t = await api<Task>('GET', `/tasks/${id}`);
    onTick(t);
    if (t.state !== 'running') return t;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new ApiError(504, 'timeout', 'the task did not finish within an hour');
}

// Kept here for the views that import it from the API module; it lives with the other figures.
export { fmtBytes } from './statsfmt';

export function fmtTime(unix: number | null | undefined): string {
  if (!unix) return '';
  return new Date(unix * 1000).toLocaleString();
}
