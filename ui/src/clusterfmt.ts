// Words for the cluster view: how long ago a member was heard from, how long a replica has been
// away, one sentence for a remote replica's state, counted nouns, and the `cairn cluster join`
// command for a join token. Pure functions (no DOM, no fetch) so they can be checked on their own
// (ui/tests/clusterfmt.test.mjs).

/** "now", "4 s ago", "3 min ago", "2 h ago", "5 d ago"; "never" when the node has no record. */
export function fmtAgo(ms: number | null | undefined): string {
  if (ms == null || !Number.isFinite(ms) || ms < 0) return 'never';
  if (ms < 1000) return 'now';
  return `${fmtSpan(ms / 1000)} ago`;
}

/** A length of time in the largest unit that keeps it readable: "45 s", "12 min", "3 h", "2 d". */
export function fmtSpan(secs: number): string {
  if (!Number.isFinite(secs) || secs < 0) return '–';
  if (secs < 60) return `${Math.floor(secs)} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h`;
  return `${Math.floor(secs / 86400)} d`;
}

/** CSS class for a health or reachability word: good, bad or in between. */
export function healthClass(word: string): string {
  if (word === 'up' || word === 'active') return 'ok';
  if (word === 'down' || word === 'away' || word === 'failed') return 'bad';
  return 'warn';
}

export interface RemoteReplica {
  disk: string;
  node: number;
  state: string;
  reachability: string;
  away_secs: number;
  dirty_chunks: number;
  resynced_chunks: number;
  resyncs: number;
}

/** One sentence for where a remote replica stands, e.g. "away for 3 min, 12 chunks to resync". */
export function replicaText(r: RemoteReplica): string {
  const dirty = r.dirty_chunks === 1 ? '1 chunk' : `${r.dirty_chunks} chunks`;
  switch (r.reachability) {
    case 'up':
      return r.dirty_chunks > 0 ? `up, ${dirty} to resync` : 'up, in sync';
    case 'away':
      return `away for ${fmtSpan(r.away_secs)}, ${dirty} to resync`;
    case 'resyncing':
      return `resyncing, ${dirty} left`;
    default:
      return r.reachability || 'unknown';
  }
}

/** "1 snapshot", "3 snapshots", "0 VMs": a count with its noun, plural unless exactly one. */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** The dashboard's line on the members: "1 member, up", "3 of 3 members up", "2 of 3 members up
 *  (c does not answer)". A member counts as up only when its heartbeats say so. */
export function membersUpText(members: { name: string; health: string }[]): string {
  const down = members.filter((m) => m.health !== 'up').map((m) => m.name);
  const up = members.length - down.length;
  if (members.length === 1) return down.length ? `1 member, ${members[0].health}` : '1 member, up';
  const head = `${up} of ${members.length} members up`;
  if (down.length === 0) return head;
  return `${head} (${down.join(', ')} ${down.length === 1 ? 'does' : 'do'} not answer)`;
}

/** The whole cluster's disks: the raw and used bytes of their own disks the data members
 *  reported (used by every node's chunks), how many reported, and the data members that did not
 *  (their disks are then missing from the sum). */
export function clusterCapacity(members: { name: string; role: string; stats?: { raw_bytes: number; used_raw_bytes: number } | null }[]):
  { raw: number; used: number; nodes: number; missing: string[] } {
  let raw = 0, used = 0, nodes = 0;
  const missing: string[] = [];
  for (const m of members) {
    if (m.role === 'witness') continue;
    if (!m.stats) { missing.push(m.name); continue; }
    raw += m.stats.raw_bytes;
    used += m.stats.used_raw_bytes;
    nodes += 1;
  }
  return { raw, used, nodes, missing };
}

/** The names the cluster records (`all`) that a list (`here`) lacks, sorted: the list names
 *  every member's virtual disks or VMs, so these are on members that did not answer it. */
export function elsewhere(all: string[] | null | undefined, here: string[]): string[] {
  const mine = new Set(here);
  return (all ?? []).filter((n) => !mine.has(n)).sort();
}

/** The note over a list naming what the cluster records and the list could not show; null
 *  when there is none. */
export function elsewhereNote(what: string, names: string[]): string | null {
  if (names.length === 0) return null;
  const shown = names.slice(0, 20).join(', ') + (names.length > 20 ? `, and ${names.length - 20} more` : '');
  return `The cluster records ${plural(names.length, what.replace(/s$/, ''))} more (${shown}) on members that did not answer just now: they are not listed until those members answer.`;
}

/** Where a listed virtual disk or VM is: its member's name, or "this node" (the one whose
 *  web UI this is). */
export function nodeWord(node: string | null | undefined): string {
  return node || 'this node';
}

/** Whether a list spans members (some item is on another member): then it shows a Node
 *  column. */
export function spansMembers(items: { node?: string | null }[]): boolean {
  return items.some((x) => !!x.node);
}

/** The command to run on the joining machine, exactly as the CLI takes it. */
export function joinCommand(address: string, token: string): string {
  const q = (s: string) => (/^[A-Za-z0-9._:\/@=+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  return `cairn cluster join --address ${q(address)} --token ${q(token)}`;
}

/** Chunks still depending on member `id` in a remove answer, or null once it is removed. */
export function drainLeft(view: any, id: number): number | null {
  const d = view?.data?.draining;
  if (!Array.isArray(d)) return null;
  const row = d.find((x: any) => x?.node === id);
  return row ? Number(row.chunks_left ?? 0) + Number(row.hosted_chunks_left ?? 0) : 0;
}

/** A member's isolation lease as the status answer words it, for the members table. */
export function leaseText(lease: string | null | undefined): string {
  switch (lease) {
    case 'held':
      return 'held';
    case 'expired':
      return 'expired';
    case 'not_needed':
      return 'not needed';
    case 'unreachable':
      return 'unreachable';
    default:
      return '–';
  }
}

/** CSS class for a lease word: an expired lease or a member that does not answer is bad. */
export function leaseClass(lease: string | null | undefined): string {
  if (lease === 'held' || lease === 'not_needed') return 'ok';
  if (lease === 'expired' || lease === 'unreachable') return 'bad';
  return 'muted';
}

export interface DrainRow {
  node: number;
  name: string;
  chunks_left: number;
  hosted_chunks_left: number;
  progress?: { chunks_left: number; chunks_at_start: number; percent: number; eta_secs: number | null } | null;
}

/** One sentence for a member being drained, e.g. "c: 9 of 20 chunks still on its disks (55%
 *  moved), about 9 s left". Without the member's own answer, only what this node knows. */
export function drainText(d: DrainRow): string {
  const p = d.progress;
  if (!p) {
    const mine = Number(d.chunks_left ?? 0) + Number(d.hosted_chunks_left ?? 0);
    return `${d.name}: ${plural(mine, 'chunk')} of this node still on its disks; it did not answer, so its whole progress is unknown`;
  }
  const eta = p.eta_secs == null ? 'time left not known yet' : `about ${fmtSpan(p.eta_secs)} left`;
  return `${d.name}: ${p.chunks_left} of ${plural(p.chunks_at_start, 'chunk')} still on its disks (${p.percent}% moved), ${eta}`;
}

/** The members (other than this node, `me`) that do not answer, and what to do should their
 * addresses have changed while they could not announce them; null while every one answers. */
export function unreachableNote(members: { id: number; name: string; health: string }[], me: number, admin: boolean): string | null {
  const away = members.filter((m) => m.id !== me && m.health !== 'up').map((m) => m.name);
  if (away.length === 0) return null;
  const what = `Not answering at the address shown: ${away.join(', ')}.`;
  const how = admin
    ? " If a member's address changed while it could not announce it (every member moved at once), tell this node where it is now with its New address button."
    : " If a member's address changed while it could not announce it (every member moved at once), an admin tells this node where it is now.";
  return what + how;
}

/** Said when this node reaches too few voters to win an election (it starts none meanwhile:
 *  the cluster status's `campaigns` is false); nothing otherwise. */
export function campaignNote(campaigns: boolean | null | undefined): string | null {
  return campaigns === false
    ? 'This node reaches too few voters to win an election: it starts none until more answer (a leader shown here may be out of date).'
    : null;
}
