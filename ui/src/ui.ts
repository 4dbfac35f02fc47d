// Shared pieces: html tag, message boxes, a task progress line, a data loader hook.
import { html } from 'htm/preact';
import { useEffect, useState, useCallback } from 'preact/hooks';
import { api, explain, Task, waitTask } from './api';

export { html };

export function ErrorBox({ error }: { error: string | null }) {
  if (!error) return null;
  return html`<p class="error" role="alert">${error}</p>`;
}

export function Note({ text }: { text: string | null }) {
  if (!text) return null;
  return html`<p class="note" role="status">${text}</p>`;
}

/** Load `path` now and whenever `reload()` is called (or every `everyMs`). */
export function useLoad<T>(path: string | null, everyMs = 0) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    if (!path) return;
    let live = true;
    api<T>('GET', path)
      .then((d) => {
        if (live) {
          setData(d);
          setError(null);
        }
      })
      .catch((e) => live && setError(explain(e)));
    return () => {
      live = false;
    };
  }, [path, tick]);
  useEffect(() => {
    if (!everyMs) return;
    const t = setInterval(reload, everyMs);
    return () => clearInterval(t);
  }, [everyMs]);
  return { data, error, reload };
}

export interface Running {
  label: string;
  task?: Task;
}

/** Run an action: shows busy state, follows a returned task to its end, reports errors. */
export function useAction(after: () => void) {
  const [running, setRunning] = useState<Running | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const run = async (label: string, f: () => Promise<any>) => {
    setError(null);
    setDone(null);
    setRunning({ label });
    try {
      const r = await f();
      if (r && typeof r.id === 'number' && r.state === 'running') {
        const t = await waitTask(r.id, (task) => setRunning({ label, task }));
        if (t.state === 'failed') throw new Error(t.error?.message ?? 'the task failed');
      }
      setDone(`${label}: done.`);
    } catch (e) {
      setError(`${label} failed. ${explain(e)}`);
    } finally {
      setRunning(null);
      after();
    }
  };
  return { run, running, error, done };
}

export function Progress({ running }: { running: Running | null }) {
  if (!running) return null;
  const t = running.task;
  const secs = t ? Math.max(0, Math.round(Date.now() / 1000 - t.started_unix)) : 0;
  const pct = t?.progress != null ? Math.round(t.progress * 100) : null;
  return html`<div class="progress" role="status" aria-live="polite">
    <span class="spinner" aria-hidden="true"></span>
    ${running.label}${t ? ` (task ${t.id}, ${secs} s)` : ''}…
    ${pct != null ? html`<progress max="100" value=${pct} aria-label="progress">${pct}%</progress>` : null}
  </div>`;
}

export function Field(props: { label: string; id: string; children: any; hint?: string }) {
  return html`<div class="field">
    <label for=${props.id}>${props.label}</label>
    ${props.children}
    ${props.hint ? html`<small>${props.hint}</small>` : null}
  </div>`;
}
