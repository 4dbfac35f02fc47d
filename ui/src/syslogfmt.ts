// The system log view's logic, apart from the DOM so it can be checked on its own
// (ui/tests/syslogfmt.test.mjs): pages of GET /api/v1/system/log merged into the window of lines
// the view keeps (newer pages while following, older ones on request), a line's local time, the
// filter, and the "skipped" wording.
// No imports: the unit tests load this file alone.

/** One line (schema SystemLogLine in the node's OpenAPI document). */
export interface LogLine {
  seq: number;
  unix_ms: number;
  text: string;
}

/** One answer of GET /system/log (schema SystemLogPage). */
export interface LogPage {
  lines: LogLine[];
  last_seq: number;
  skipped: number;
  /** Lines the node still keeps that are older than this page's first line. */
  older?: number;
  /** Names the node's process: its sequence numbers start again at 1 when it restarts. */
  boot_id?: string;
}

/** What the view has read so far: the newest lines, oldest first, and where to read on. */
export interface LogState {
  lines: LogLine[];
  /** Pass as `after` in the next request. */
  after: number;
  /** Lines the node had but the view never got (over a page's limit, or dropped from memory). */
  skipped: number;
  /** The boot_id of the pages read so far. */
  boot?: string;
  /**
   * Lines the node keeps that are older than the view's first line, as the page that brought
   * that line said (read them with before=<first seq>; the node may have dropped some since).
   */
  older: number;
}

export const EMPTY_LOG: LogState = { lines: [], after: 0, skipped: 0, older: 0 };

const count = (n: unknown) => (typeof n === 'number' && Number.isFinite(n) && n > 0 ? n : 0);

/**
 * `page` added to `state`: its lines after the ones already kept (a line seen before, by its
 * sequence number, is not kept twice), only the newest `keep`, and the skipped count summed.
 * A page that does not move the cursor forward leaves the state as it is (the same object).
 * A page from another run of the node's process (another boot_id: its numbers started again at
 * 1, and the page only holds lines past the old cursor) starts the view over: nothing kept, read
 * again from the first line.
 */
export function mergeLogPage(state: LogState, page: LogPage, keep: number): LogState {
  const boot = typeof page.boot_id === 'string' ? page.boot_id : state.boot;
  if (state.boot !== undefined && boot !== state.boot) {
    return { lines: [], after: 0, skipped: 0, boot, older: 0 };
  }
  const lastKept = state.lines.length ? state.lines[state.lines.length - 1].seq : state.after;
  const fresh = (page.lines ?? []).filter((l) => l.seq > lastKept);
  const skipped = Number.isFinite(page.skipped) && page.skipped > 0 ? page.skipped : 0;
  const after = Math.max(state.after, Number.isFinite(page.last_seq) ? page.last_seq : 0, lastKept);
  if (!fresh.length && !skipped && after === state.after && boot === state.boot) return state;
  const lines = fresh.length ? state.lines.concat(fresh) : state.lines;
  const kept = lines.length > keep ? lines.slice(lines.length - keep) : lines;
  // The page's `older` is about the view's first line only when that line came with this page.
  const older = !state.lines.length && fresh.length ? count(page.older) : kept !== lines ? 0 : state.older;
  return { lines: kept, after, skipped: state.skipped + skipped, boot, older };
}

/**
 * `page` (an answer to before=<the view's first seq>) put in front of the lines kept: its lines
 * older than the first one kept, only the newest `keep` of all, and the node's count of lines
 * older still. The lines it brings were counted as skipped (before the first line read), so the
 * count goes down by as many. A page from another run of the node's process is left out (the
 * next poll starts the view over).
 */
export function mergeOlderPage(state: LogState, page: LogPage, keep: number): LogState {
  if (typeof page.boot_id === 'string' && state.boot !== undefined && page.boot_id !== state.boot) return state;
  const first = state.lines.length ? state.lines[0].seq : Infinity;
  const older = (page.lines ?? []).filter((l) => l.seq < first);
  const lines = older.concat(state.lines);
  return {
    ...state,
    lines: lines.length > keep ? lines.slice(lines.length - keep) : lines,
    skipped: Math.max(0, state.skipped - older.length),
    older: lines.length > keep ? 0 : count(page.older),
  };
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** "2026-11-26 23:05:07.009": when a line was written, in the browser's time zone. */
export function fmtLogTime(unixMs: number): string {
  if (!Number.isFinite(unixMs) || unixMs < 0) return '';
  const d = new Date(unixMs);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** The lines whose text holds `query` (any case; surrounding spaces ignored); all for none. */
export function filterLog(lines: LogLine[], query: string): LogLine[] {
  const q = query.trim().toLowerCase();
  return q ? lines.filter((l) => l.text.toLowerCase().includes(q)) : lines;
}

/** "skipped 1 line", "skipped 1,234 lines"; empty when nothing was skipped. */
export function fmtSkipped(n: number): string {
  if (!Number.isFinite(n) || n <= 0) return '';
  return `skipped ${n.toLocaleString('en-US')} ${n === 1 ? 'line' : 'lines'}`;
}
