// The node's system log (GET /api/v1/system/log): the lines its process keeps, newest at the
// bottom, followed every 2 s while the view is open, with a filter; older lines than the first
// page a button away (before=<first seq>).
import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError, explain } from '../api';
import { html, ErrorBox, Field } from '../ui';
import { EMPTY_LOG, filterLog, fmtLogTime, fmtSkipped, LogPage, LogState, mergeLogPage, mergeOlderPage } from '../syslogfmt';

/** The node keeps 2,000 lines; the view keeps as many. */
const KEEP = 2000;
const EVERY_MS = 2000;

/** Lines per request (the most the node gives at once). */
const PAGE = 1000;

/**
 * Reads the log, then what is newer every `everyMs` until the view is left (or the node has none);
 * `loadOlder` reads the page before the first line kept.
 */
function useSystemLog(everyMs: number) {
  const [log, setLog] = useState<LogState>(EMPTY_LOG);
  const [error, setError] = useState<string | null>(null);
  const [noLog, setNoLog] = useState(false);
  const [loadingOlder, setLoadingOlder] = useState(false);
  // The state both readers (the poll and loadOlder) merge into; each new one goes to the view.
  const state = useRef<LogState>(EMPTY_LOG);
  const live = useRef(true);
  useEffect(() => {
    let stopped = false;
    live.current = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    state.current = EMPTY_LOG;
    const poll = async () => {
      try {
        // The newest page the node gives; `skipped` says how many came before.
        const page = await api<LogPage>('GET', `/system/log?after=${state.current.after}&limit=${PAGE}`);
        if (stopped) return;
        state.current = mergeLogPage(state.current, page, KEEP);
        setLog(state.current);
        setError(null);
      } catch (e) {
        if (stopped) return;
        if (e instanceof ApiError && e.status === 404) {
          setNoLog(true);
          return; // nothing will appear: stop asking
        }
        setError(explain(e));
      }
      // One request at a time: the next one 2 s after this answer.
      if (!stopped) timer = setTimeout(poll, everyMs);
    };
    poll();
    return () => {
      stopped = true;
      live.current = false;
      clearTimeout(timer);
    };
  }, [everyMs]);
  const loadOlder = async () => {
    const first = state.current.lines[0];
    if (!first || loadingOlder) return;
    setLoadingOlder(true);
    try {
      const page = await api<LogPage>('GET', `/system/log?before=${first.seq}&limit=${PAGE}`);
      if (!live.current) return;
      state.current = mergeOlderPage(state.current, page, KEEP);
      setLog(state.current);
      setError(null);
    } catch (e) {
      if (live.current) setError(explain(e));
    } finally {
      if (live.current) setLoadingOlder(false);
    }
  };
  return { log, error, noLog, loadOlder, loadingOlder };
}

export function SystemLog() {
  const { log, error, noLog, loadOlder, loadingOlder } = useSystemLog(EVERY_MS);
  const [query, setQuery] = useState('');
  const shown = filterLog(log.lines, query);
  // Follow new lines: stay at the bottom when the reader was there, else leave the scroll alone.
  const box = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  useLayoutEffect(() => {
    const b = box.current;
    if (b && atBottom.current) b.scrollTop = b.scrollHeight;
  }, [shown.length, shown[shown.length - 1]?.seq]);
  const onScroll = () => {
    const b = box.current;
    if (b) atBottom.current = b.scrollHeight - b.scrollTop - b.clientHeight < 24;
  };
  const skipped = fmtSkipped(log.skipped);
  return html`<section aria-labelledby="syslog-h" class="syslog">
    <h2 id="syslog-h">System log</h2>
    ${noLog
      ? html`<p class="empty" role="status">This node keeps no system log.</p>`
      : html`
        <${ErrorBox} error=${error} />
        <form class="inline" role="search" aria-label="filter the system log" onSubmit=${(e: Event) => e.preventDefault()}>
          <${Field} label="Show only lines containing" id="syslog-filter">
            <input id="syslog-filter" type="search" value=${query} autocomplete="off"
              onInput=${(e: any) => setQuery(e.currentTarget.value)} />
          <//>
        </form>
        <p class="muted" id="syslog-count">
          ${query.trim() ? `${shown.length} of ${log.lines.length} lines match` : `${log.lines.length} lines`}, newest at the bottom, updated every 2 s.
          ${skipped ? html` <span data-skipped=${log.skipped}>(${skipped}: older than these, or written faster than the view read them)</span>` : null}
        </p>
        ${log.older > 0
          ? html`<p><button type="button" disabled=${loadingOlder} onClick=${loadOlder}>
              ${loadingOlder ? 'Loading older lines…' : `Show older lines (${log.older.toLocaleString('en-US')} more kept)`}</button></p>`
          : null}
        <div class="table-wrap syslog-box" ref=${box} onScroll=${onScroll} role="log" aria-labelledby="syslog-h" aria-describedby="syslog-count" tabindex="0">
          <table aria-label="system log lines">
            <thead><tr><th scope="col">Time</th><th scope="col">Line</th></tr></thead>
            <tbody>${shown.map((l) => html`<tr key=${l.seq} data-seq=${l.seq}>
              <td class="syslog-time">${fmtLogTime(l.unix_ms)}</td><td class="mono syslog-text">${l.text}</td></tr>`)}</tbody>
          </table>
        </div>`}
  </section>`;
}
