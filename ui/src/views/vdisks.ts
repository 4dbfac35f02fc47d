import { useState } from 'preact/hooks';
import { api, fmtBytes, fmtTime } from '../api';
import { elsewhere, elsewhereNote, nodeWord, spansMembers } from '../clusterfmt';
import { html, ErrorBox, Note, Progress, useAction, useLoad, Field } from '../ui';
import { diskApi } from '../vmapi';

function Snapshots({ vd, act, canWrite }: { vd: any; act: ReturnType<typeof useAction>; canWrite: boolean }) {
  const snaps = useLoad<any>(`/vdisks/${encodeURIComponent(vd.name)}/snapshots?limit=1000`);
  const run = (label: string, f: () => Promise<any>) => act.run(label, f).then(snaps.reload);
  const items: any[] = snaps.data?.items ?? [];
  return html`<div class="snapshots">
    <${ErrorBox} error=${snaps.error} />
    ${items.length === 0 ? html`<p class="muted">No snapshots of ${vd.name}.</p>` : html`<ul aria-label=${`snapshots of ${vd.name}`}>
      ${items.map((s) => html`<li>
        <span>${s.name}</span> <small class="muted">${fmtTime(s.created_unix)}</small>
        ${canWrite ? html`
          <button onClick=${() => { const n = prompt(`Name of the clone of ${vd.name}@${s.name}:`, `${vd.name}-${s.name}-clone`); if (n) run(`Clone ${vd.name}@${s.name}`, () => api('POST', `/vdisks/${encodeURIComponent(vd.name)}/clone`, { name: n, snapshot: s.name })); }}>Clone</button>
          <button onClick=${() => confirm(`Roll ${vd.name} back to ${s.name}? Writes since then are lost.`) && run(`Roll back ${vd.name} to ${s.name}`, () => api('POST', `/vdisks/${encodeURIComponent(vd.name)}/snapshots/${encodeURIComponent(s.name)}/rollback`, {}))}>Roll back</button>
          <button class="danger" onClick=${() => confirm(`Delete snapshot ${s.name}?`) && run(`Delete snapshot ${s.name}`, () => api('DELETE', `/vdisks/${encodeURIComponent(vd.name)}/snapshots/${encodeURIComponent(s.name)}`))}>Delete</button>` : null}
      </li>`)}
    </ul>`}
  </div>`;
}

/** "12 r / 3 w IOPS, 1.2 MiB/s, 180 µs" from a live vdisk sample; a dash when idle or unknown. */
function ioText(s: any): string {
  if (!s) return '–';
  const iops = (s.read_iops ?? 0) + (s.write_iops ?? 0);
  if (iops < 0.05) return 'idle';
  const bytes = (s.read_bytes_per_sec ?? 0) + (s.write_bytes_per_sec ?? 0);
  const lat = Math.max(s.read_latency_us ?? 0, s.write_latency_us ?? 0);
  return `${Math.round(s.read_iops)} r / ${Math.round(s.write_iops)} w IOPS, ${fmtBytes(bytes)}/s, ${Math.round(lat)} µs`;
}

export function Vdisks({ role }: { role: string }) {
  const list = useLoad<any>('/vdisks?limit=1000', 10000);
  // The list names every member's disks; the cluster record says which ones it could not.
  const cluster = useLoad<any>('/cluster', 10000);
  // The latest live sample (refreshed every 2 s) carries each disk's I/O over the last second.
  const live = useLoad<any>('/stats', 2000);
  const io: Record<string, any> = {};
  for (const s of live.data?.vdisks ?? []) io[s.name] = s;
  const act = useAction(() => { list.reload(); cluster.reload(); });
  const [name, setName] = useState('');
  const [size, setSize] = useState('10G');
  const [imp, setImp] = useState({ name: '', file: '' });
  const [open, setOpen] = useState<string | null>(null);
  const canWrite = role !== 'read_only';
  const admin = role === 'admin';
  const items: any[] = list.data?.items ?? [];
  const others = list.data && cluster.data ? elsewhere(cluster.data.vdisks, items.map((v) => v.name)) : [];
  const spans = spansMembers(items);
  return html`<section aria-labelledby="vd-h">
    <h2 id="vd-h">Virtual disks</h2>
    <${Note} text=${elsewhereNote('virtual disks', others)} />
    <${ErrorBox} error=${list.error || act.error} />
    <${Note} text=${act.done} />
    <${Progress} running=${act.running} />
    ${canWrite ? html`<form class="inline" aria-label="create a virtual disk" onSubmit=${(e: Event) => { e.preventDefault(); act.run(`Create ${name}`, () => api('POST', '/vdisks', { name, size })).then(() => setName('')); }}>
      <${Field} label="Name" id="vd-name"><input id="vd-name" value=${name} onInput=${(e: any) => setName(e.currentTarget.value)} required pattern="[A-Za-z0-9][A-Za-z0-9._\\-]*" maxlength="64" /></${Field}>
      <${Field} label="Size" id="vd-size" hint="like 512M, 10G, 2T"><input id="vd-size" value=${size} onInput=${(e: any) => setSize(e.currentTarget.value)} required /></${Field}>
      <button type="submit" disabled=${!!act.running}>Create disk</button>
    </form>` : null}
    ${items.length === 0 && list.data ? html`<p class="muted">${others.length ? 'No virtual disks listed.' : 'No virtual disks yet.'}</p>` : null}
    <div class="table-wrap"><table>
      <thead><tr><th scope="col">Name</th>${spans ? html`<th scope="col">Node</th>` : null}<th scope="col">Size</th><th scope="col">Used</th><th scope="col">Snapshots</th><th scope="col">I/O now</th><th scope="col">Created</th><th scope="col">Actions</th></tr></thead>
      <tbody>${items.map((v) => html`<tr data-vdisk=${v.name}>
          <td>${v.name}</td>${spans ? html`<td data-node=${nodeWord(v.node)}>${nodeWord(v.node)}</td>` : null}<td>${fmtBytes(v.size_bytes)}</td><td>${fmtBytes(v.used_bytes)}</td><td>${v.snapshots}</td><td data-io=${v.name}>${ioText(io[v.name])}</td><td>${fmtTime(v.created_unix)}</td>
          <td class="actions">
            <button aria-expanded=${open === v.name} onClick=${() => setOpen(open === v.name ? null : v.name)}>Snapshots</button>
            ${canWrite ? html`
              <button onClick=${() => { const n = prompt(`Snapshot name for ${v.name}:`, `snap-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}`); if (n) act.run(`Snapshot ${v.name}`, () => api('POST', `/vdisks/${encodeURIComponent(v.name)}/snapshots`, { name: n })).then(() => setOpen(v.name)); }}>Snapshot</button>
              <button onClick=${() => { const n = prompt(`Name of the clone of ${v.name}:`, `${v.name}-clone`); if (n) act.run(`Clone ${v.name}`, () => api('POST', `/vdisks/${encodeURIComponent(v.name)}/clone`, { name: n })); }}>Clone</button>
              <button onClick=${() => { const s = prompt(`New size of ${v.name} (grow only):`, fmtBytes(v.size_bytes * 2).replace(/ |iB/g, '')); if (s) act.run(`Grow ${v.name}`, () => api('PATCH', `/vdisks/${encodeURIComponent(v.name)}`, { size: s })); }}>Grow</button>
              <button title="hand the disk over to another cluster member, which serves it from then on" onClick=${() => { const to = prompt(`Move ${v.name} to which cluster member (name or id)? It must not be in use by a running VM.`); if (to && to.trim()) act.run(`Move ${v.name} to ${to.trim()}`, () => diskApi.move(v.name, to.trim())); }}>Move</button>
              <button class="danger" onClick=${() => confirm(`Delete ${v.name}? Its data is gone for good (clones keep theirs).`) && act.run(`Delete ${v.name}`, () => api('DELETE', `/vdisks/${encodeURIComponent(v.name)}`))}>Delete</button>` : null}
          </td>
        </tr>
        ${open === v.name ? html`<tr><td colspan=${spans ? 8 : 7}><${Snapshots} vd=${v} act=${act} canWrite=${canWrite} /></td></tr>` : null}`)}
      </tbody>
    </table></div>
    ${admin ? html`<form class="inline" aria-label="import a raw image" onSubmit=${(e: Event) => { e.preventDefault(); act.run(`Import ${imp.name}`, () => api('POST', '/vdisks/import', imp)); }}>
      <${Field} label="Import as" id="imp-name"><input id="imp-name" value=${imp.name} onInput=${(e: any) => setImp({ ...imp, name: e.currentTarget.value })} required /></${Field}>
      <${Field} label="Raw image file on the node" id="imp-file"><input id="imp-file" value=${imp.file} onInput=${(e: any) => setImp({ ...imp, file: e.currentTarget.value })} placeholder="/var/images/disk.raw" required /></${Field}>
      <button type="submit" disabled=${!!act.running}>Import</button>
    </form>` : null}
  </section>`;
}
