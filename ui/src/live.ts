// The node's live statistics for a view: the recent history once, then every new sample from
// the server-sent event stream, in one window of the newest `keep` samples (one a second).
// The dashboard and a VM's network cards both chart from it.
import { useEffect, useState } from 'preact/hooks';
import { api } from './api';
import { appendSample, mergeHistory } from './statsfmt';

export function useLiveSamples<T extends { time_ms: number }>(keep: number) {
  const [samples, setSamples] = useState<T[]>([]);
  const [live, setLive] = useState(false);
  useEffect(() => {
    let stopped = false;
    api<{ items: T[] }>('GET', `/stats/history?limit=${keep}`)
      .then((h) => {
        // Live samples may already have arrived: keep them and put the older history before.
        if (!stopped) setSamples((cur) => mergeHistory(cur, h.items ?? [], keep));
      })
      .catch(() => {});
    const es = new EventSource('/api/v1/stats/stream');
    es.addEventListener('sample', (ev: MessageEvent) => {
      let s: T;
      try {
        s = JSON.parse(ev.data) as T;
      } catch {
        return;
      }
      setLive(true);
      setSamples((cur) => appendSample(cur, s, keep));
    });
    es.onerror = () => setLive(false);
    return () => {
      stopped = true;
      es.close();
    };
  }, [keep]);
  return { samples, live };
}
