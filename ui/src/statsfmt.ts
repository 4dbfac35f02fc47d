// Live statistics in words and as chart columns, apart from the DOM so they can be checked on
// their own (ui/tests/statsfmt.test.mjs): byte sizes and rates, the window of samples a view
// keeps, and one VM's network card picked out of the samples of /api/v1/stats.
// No imports: the unit tests load this file alone.

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)} ${u[i]}`;
}

const usable = (n: number | null | undefined): n is number => typeof n === 'number' && Number.isFinite(n) && n >= 0;

/** "1.2 KiB/s"; a dash for a rate that is missing or makes no sense. */
export function fmtByteRate(n: number | null | undefined): string {
  return usable(n) ? `${fmtBytes(n)}/s` : '–';
}

/** "12 frames/s", "0.5 frames/s" (a frame every other second), "1 frame/s"; a dash when unknown. */
export function fmtFrameRate(n: number | null | undefined): string {
  if (!usable(n)) return '–';
  const v = n >= 10 ? Math.round(n) : +n.toFixed(1);
  return `${v} ${v === 1 ? 'frame' : 'frames'}/s`;
}

/** "1 frame (60 B)", "3 frames (2.0 KiB)": a NIC's total since its VM started. */
export function fmtFrames(frames: number | null | undefined, bytes: number | null | undefined): string {
  if (!usable(frames) || !usable(bytes)) return '–';
  return `${frames} ${frames === 1 ? 'frame' : 'frames'} (${fmtBytes(bytes)})`;
}

/** A chart axis tick for bytes: like fmtBytes, but 0.5 B stays 0.5 B rather than "1 B". */
export function fmtAxisBytes(v: number): string {
  return Math.abs(v) < 10 ? `${+v.toFixed(1)} B` : fmtBytes(v);
}

/** One network card in a live sample (schema NicSample in the node's OpenAPI document). */
export interface NicSample {
  id: string;
  rx_packets: number;
  rx_bytes: number;
  tx_packets: number;
  tx_bytes: number;
  errors: number;
  rx_packets_per_sec: number;
  rx_bytes_per_sec: number;
  tx_packets_per_sec: number;
  tx_bytes_per_sec: number;
}

/** The parts of a live sample (schema Sample) these helpers read. */
export interface LiveSample {
  time_ms: number;
  vms?: { name: string; nics?: NicSample[] }[];
}

/** Older samples (history) put before the ones already held, without overlap; the newest `keep`. */
export function mergeHistory<T extends { time_ms: number }>(cur: T[], older: T[], keep: number): T[] {
  const first = cur.length ? cur[0].time_ms : Infinity;
  const merged = older.filter((s) => s.time_ms < first).concat(cur);
  return merged.slice(Math.max(0, merged.length - keep));
}

/** A live sample added at the end unless it is not newer than the last one; the newest `keep`. */
export function appendSample<T extends { time_ms: number }>(cur: T[], s: T, keep: number): T[] {
  if (cur.length && cur[cur.length - 1].time_ms >= s.time_ms) return cur;
  const next = cur.concat([s]);
  return next.length > keep ? next.slice(next.length - keep) : next;
}

/** VM `vm`'s network cards in the newest sample that lists the VM; [] when none does. */
export function latestNics(samples: LiveSample[], vm: string): NicSample[] {
  for (let i = samples.length - 1; i >= 0; i--) {
    const v = samples[i].vms?.find((x) => x.name === vm);
    if (v) return v.nics ?? [];
  }
  return [];
}

/**
 * Chart columns for card `nic` of VM `vm`: time (seconds), receive and transmit bytes/s, then
 * receive and transmit frames/s. A sample without the card (the VM was not listed or had not
 * run yet) gives nulls, which the chart draws as a gap rather than as a fall to zero.
 */
export function nicColumns(samples: LiveSample[], vm: string, nic: string): (number | null)[][] {
  const cols: (number | null)[][] = [[], [], [], [], []];
  for (const s of samples) {
    const n = s.vms?.find((x) => x.name === vm)?.nics?.find((x) => x.id === nic);
    cols[0].push(s.time_ms / 1000);
    cols[1].push(n ? n.rx_bytes_per_sec : null);
    cols[2].push(n ? n.tx_bytes_per_sec : null);
    cols[3].push(n ? n.rx_packets_per_sec : null);
    cols[4].push(n ? n.tx_packets_per_sec : null);
  }
  return cols;
}

/** What a screen reader hears for a card's charts: the rates now, in words. */
export function nicSummary(id: string, n: NicSample | undefined): string {
  if (!n) return `${id}: no figures yet`;
  return `${id} now: receiving ${fmtByteRate(n.rx_bytes_per_sec)} (${fmtFrameRate(n.rx_packets_per_sec)}), ` +
    `sending ${fmtByteRate(n.tx_bytes_per_sec)} (${fmtFrameRate(n.tx_packets_per_sec)}), ${n.errors} ${n.errors === 1 ? 'error' : 'errors'} in total`;
}
