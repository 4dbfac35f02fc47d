// The cluster view: raft members with leader and health, and this node's data redundancy
// (degraded and rebuilding chunks, its replicas on other nodes' disks); for admins, join tokens
// and member removal (./clustermembers.ts). Polls GET /cluster every 3 s.
import { useState } from 'preact/hooks';
import { html, ErrorBox, Note, useLoad } from '../ui';
import { JoinToken, LocateMember, RemoveMember } from './clustermembers';
import { drainText, DrainRow, fmtAgo, healthClass, leaseClass, leaseText, plural, replicaText, RemoteReplica, unreachableNote, campaignNote } from '../clusterfmt';
import './cluster.css';

interface Member {
  id: number;
  name: string;
  address: string;
  role: string;
  state: string;
  voter: boolean;
  leader: boolean;
  health: string;
  last_seen_ms_ago: number | null;
  lease?: string | null;
}

interface ClusterView {
  cluster_id: string;
  me: number;
  leader: number | null;
  term: number;
  commit_index: number | null;
  last_log_index: number | null;
  /** false while this node reaches too few voters to win an election (it does not start one) */
  campaigns?: boolean | null;
  placement_version: number;
  members: Member[];
  vdisks: string[];
  snapshots: number;
  vms: string[];
  data: {
    degraded_chunks: number;
    rebuilding: boolean;
    draining?: DrainRow[];
    remote_replicas?: RemoteReplica[];
    stale_chunks?: number;
    hosted_chunks?: number;
    write_epoch?: number;
    mirror_listen?: string | null;
  };
}

function Members({ c, admin, onRemoved }: { c: ClusterView; admin: boolean; onRemoved: (msg: string | null, err: string | null) => void }) {
  return html`<div class="table-wrap"><table aria-label="cluster members">
    <thead><tr><th scope="col">Name</th><th scope="col">ID</th><th scope="col">Address</th><th scope="col">Role</th><th scope="col">State</th><th scope="col">Health</th><th scope="col">Lease</th>${admin ? html`<th scope="col">Actions</th>` : null}</tr></thead>
    <tbody>${c.members.map((m) => html`<tr data-member=${m.name} data-health=${m.health} data-lease=${m.lease ?? 'none'} data-leader=${m.leader ? 'yes' : 'no'}>
      <td>${m.name}${m.id === c.me ? html` <small class="muted">(this node)</small>` : null}
        ${m.leader ? html` <span class="badge leader" title="the raft leader">leader</span>` : null}</td>
      <td>${m.id}</td>
      <td class="mono">${m.address}</td>
      <td>${m.role}, ${m.voter ? 'voter' : 'non-voter'}</td>
      <td>${m.state}</td>
      <td><span class=${healthClass(m.health)}>${m.health}</span>
        ${m.id === c.me ? null : html` <small class="muted">seen ${fmtAgo(m.last_seen_ms_ago)}</small>`}</td>
      <td><span class=${leaseClass(m.lease)}>${leaseText(m.lease)}</span></td>
      ${admin ? html`<td>${m.id === c.me ? html`<span class="muted">this node</span>` : html`<div class="buttons"><${RemoveMember} id=${m.id} name=${m.name} onDone=${onRemoved} /> <${LocateMember} id=${m.id} name=${m.name} address=${m.address} onDone=${onRemoved} /></div>`}</td>` : null}
    </tr>`)}</tbody>
  </table></div>`;
}

function Data({ c }: { c: ClusterView }) {
  const d = c.data;
  const names: Record<number, string> = {};
  for (const m of c.members) names[m.id] = m.name;
  const reps = d.remote_replicas ?? [];
  const drains = d.draining ?? [];
  return html`${drains.length === 0 ? null : html`<h4>Members being drained</h4>
    <ul aria-label="members being drained">${drains.map((r) => html`<li data-draining=${r.name}>${drainText(r)}</li>`)}</ul>`}
    <dl class="facts" aria-label="data on this node">
      <dt>Degraded chunks</dt><dd data-fact="degraded" class=${d.degraded_chunks ? 'bad' : 'ok'}>${d.degraded_chunks}</dd>
      <dt>Rebuilding</dt><dd data-fact="rebuilding">${d.rebuilding ? 'yes, a rebuild is running' : 'no'}</dd>
      <dt>Stale chunks</dt><dd>${d.stale_chunks ?? 0} <small class="muted">(written while a replica was away)</small></dd>
      <dt>Chunks hosted for others</dt><dd>${d.hosted_chunks ?? 0}</dd>
      <dt>Write epoch</dt><dd>${d.write_epoch ? d.write_epoch : 'not mirroring'}</dd>
      <dt>Mirror endpoint</dt><dd class="mono">${d.mirror_listen ?? 'none'}</dd>
    </dl>
    <h4>Replicas on other nodes</h4>
    ${reps.length === 0
      ? html`<p class="muted" data-replicas="none">None: this node's virtual disks are not mirrored to another node.</p>`
      : html`<div class="table-wrap"><table aria-label="remote replicas">
        <thead><tr><th scope="col">Disk</th><th scope="col">Node</th><th scope="col">State</th><th scope="col">Reachability</th><th scope="col">Dirty</th><th scope="col">Resynced</th><th scope="col">Resyncs</th></tr></thead>
        <tbody>${reps.map((r) => html`<tr data-replica=${r.disk}>
          <td>${r.disk}</td><td>${names[r.node] ?? r.node}</td>
          <td><span class=${healthClass(r.state)}>${r.state}</span></td>
          <td><span class=${healthClass(r.reachability)}>${replicaText(r)}</span></td>
          <td>${r.dirty_chunks}</td><td>${r.resynced_chunks}</td><td>${r.resyncs}</td>
        </tr>`)}</tbody>
      </table></div>`}`;
}

export function Cluster({ role }: { role?: string }) {
  const cl = useLoad<ClusterView>('/cluster', 3000);
  const c = cl.data;
  const admin = role === 'admin';
  const [msg, setMsg] = useState<string | null>(null);
  const [err, setErr] = useState<string | null>(null);
  const onRemoved = (m: string | null, e: string | null) => {
    setMsg(m);
    setErr(e);
    cl.reload();
  };
  const leader = c?.members.find((m) => m.id === c.leader);
  return html`<section aria-labelledby="cluster-h">
    <h2 id="cluster-h">Cluster</h2>
    <${ErrorBox} error=${cl.error} />
    ${!c ? (cl.error ? null : html`<p class="loading">Loading…</p>`) : html`
      <dl class="facts" aria-label="cluster summary">
        <dt>Cluster ID</dt><dd class="mono">${c.cluster_id}</dd>
        <dt>Leader</dt><dd data-fact="leader">${leader ? leader.name : c.leader == null ? html`<span class="bad">none (no quorum?)</span>` : `member ${c.leader}`}</dd>
        <dt>Term</dt><dd>${c.term}</dd>
        <dt>Commit index</dt><dd>${c.commit_index ?? '–'}${c.last_log_index != null && c.last_log_index !== c.commit_index ? ` (log up to ${c.last_log_index})` : ''}</dd>
        <dt>Replicated objects</dt><dd>${plural(c.vdisks.length, 'virtual disk')}, ${plural(c.snapshots, 'snapshot')}, ${plural(c.vms.length, 'VM')}</dd>
      </dl>
      <${Note} text=${campaignNote(c.campaigns)} />
      <h3>Members (${c.members.length})</h3>
      <${ErrorBox} error=${err} />
      <${Note} text=${msg} />
      <${Members} c=${c} admin=${admin} onRemoved=${onRemoved} />
      <${Note} text=${unreachableNote(c.members, c.me, admin)} />
      ${admin ? html`<h3>Add a node</h3><${JoinToken} />` : null}
      <h3>Data on this node</h3>
      <${Data} c=${c} />`}
  </section>`;
}
