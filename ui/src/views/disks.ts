import { useState } from 'preact/hooks';
import { api, fmtBytes } from '../api';
import { healthClass } from '../clusterfmt';
import { html, ErrorBox, Note, Progress, useAction, useLoad, Field } from '../ui';

export function Disks({ role }: { role: string }) {
  const nodes = useLoad<any>('/nodes', 5000);
  const disks = useLoad<any>('/disks?limit=1000', 5000);
  // How this node reaches the other members' disks (its copies on them), by disk name.
  const cluster = useLoad<any>('/cluster', 5000);
  const reach: Record<string, string> = {};
  for (const r of cluster.data?.data?.remote_replicas ?? []) reach[r.disk] = r.reachability;
  const notUp = (d: any) => d.remote && reach[d.name] && reach[d.name] !== 'up';
  const act = useAction(() => disks.reload());
  // Another member's disk is removed by that member (this node passes the request on).
  const memberName = (id: number) => `member ${(cluster.data?.members ?? []).find((m: any) => m.id === id)?.name ?? id}`;
  const [path, setPath] = useState('');
  const admin = role === 'admin';
  const ro = role === 'read_only';
  return html`<section aria-labelledby="disks-h">
    <h2 id="disks-h">Nodes and disks</h2>
    <h3>Nodes</h3>
    <${ErrorBox} error=${nodes.error} />
    <div class="table-wrap"><table>
      <thead><tr><th scope="col">Name</th><th scope="col">Role</th><th scope="col">State</th><th scope="col">CPUs</th><th scope="col">Memory</th><th scope="col">Own disks used</th><th scope="col">Uptime</th><th scope="col">Version</th></tr></thead>
      <tbody>${(nodes.data?.items ?? []).map((n: any) => html`<tr data-node=${n.name}>
        <td>${n.name}${n.this_node ? html` <span class="muted">(this node)</span>` : null}</td>
        <td>${n.role ?? 'data'}${n.leader ? ', leader' : ''}</td>
        <td class=${healthClass(n.state)}>${n.state}</td>
        <td>${n.cpu_count ?? '–'}</td>
        <td>${n.mem_total_bytes ? `${fmtBytes(n.mem_used_bytes)} / ${fmtBytes(n.mem_total_bytes)}` : '–'}</td>
        <td>${n.raw_bytes ? `${fmtBytes(n.used_raw_bytes)} of ${fmtBytes(n.raw_bytes)}` : '–'}</td>
        <td>${n.uptime_secs == null ? '–' : `${Math.round(n.uptime_secs / 60)} min`}</td><td>${n.version ?? '–'}</td></tr>`)}</tbody>
    </table></div>
    <h3>Disks</h3>
    <${ErrorBox} error=${disks.error || act.error} />
    <${Note} text=${act.done} />
    <${Progress} running=${act.running} />
    <div class="table-wrap"><table>
      <thead><tr><th scope="col">Name</th><th scope="col">Path</th><th scope="col">State</th><th scope="col">Used</th><th scope="col">Size</th><th scope="col">Errors</th>${admin ? html`<th scope="col">Actions</th>` : null}</tr></thead>
      <tbody>${(disks.data?.items ?? []).map((d: any) => html`<tr>
        <td>${d.name}</td><td class="mono">${d.path}</td>
        <td class=${notUp(d) ? 'warn' : ''}>${d.state}${notUp(d) ? `, ${reach[d.name]}` : ''}</td>
        <td>${fmtBytes(d.used_bytes)}</td><td>${fmtBytes(d.size_bytes)}</td><td>${d.errors}</td>
        ${admin ? html`<td><button class="danger" onClick=${() => confirm(d.remote ? `Drain and remove disk ${d.name} from ${memberName(d.node_id)}? That member moves its data off it first.` : `Drain and remove disk ${d.name}?`) && act.run(`Remove disk ${d.name}`, () => api('DELETE', `/disks/${encodeURIComponent(d.id)}`))}>Remove</button></td>` : null}
      </tr>`)}</tbody>
    </table></div>
    ${!ro ? html`<p><button onClick=${() => act.run('Scrub', () => api('POST', '/disks/scrub', {}))}>Verify all data (scrub)</button></p>` : null}
    ${admin ? html`<form class="inline" onSubmit=${(e: Event) => { e.preventDefault(); act.run(`Add disk ${path}`, () => api('POST', '/disks', { path })); }}>
      <${Field} label="Add a disk (file or device path on the node)" id="disk-path">
        <input id="disk-path" value=${path} onInput=${(e: any) => setPath(e.currentTarget.value)} placeholder="/dev/sdb" required />
      </${Field}>
      <button type="submit">Add disk</button>
    </form>` : null}
  </section>`;
}
