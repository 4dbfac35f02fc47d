// Virtual machines: the list with state and live statistics (rates from the difference of two
// samples), power actions, the create wizard, a VM's details (disks with snapshots and clone,
// network cards with live rates), and the serial console. Every action shows progress and
// explains failures in words.
import { useEffect, useRef, useState } from 'preact/hooks';
import { explain, fmtBytes, fmtTime } from '../api';
import { elsewhere, elsewhereNote, nodeWord, spansMembers } from '../clusterfmt';
import { html, ErrorBox, Note, Progress, useAction, useLoad } from '../ui';
import { diskApi, Step, vmApi, VmView } from '../vmapi';
import { CreateWizard, StepList } from './vmcreate';
import { Console } from './console';
import { VmEdit } from './vmedit';
import { VmNics } from './vmnet';
import { bridgeWords } from '../vmeditfmt';

interface Rates {
  cpu: number | null; // percent of the VM's vCPUs
  iops: number | null;
  bps: number | null;
}
interface Sample {
  t: number;
  cpu: number;
  ops: number;
  bytes: number;
}

function sampleOf(v: VmView, t: number): Sample | null {
  if (!v.stats) return null;
  const d = v.stats.disks;
  return {
    t,
    cpu: v.stats.cpu_time_ns,
    ops: d.reduce((a, x) => a + x.read_ops + x.write_ops, 0),
    bytes: d.reduce((a, x) => a + x.read_bytes + x.write_bytes, 0),
  };
}

/** Poll the VM list every 2 s and derive per-VM rates. */
function useVms() {
  const [vms, setVms] = useState<VmView[] | null>(null);
  const [rates, setRates] = useState<Record<string, Rates>>({});
  const [error, setError] = useState<string | null>(null);
  const prev = useRef<Record<string, Sample>>({});
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    vmApi
      .list()
      .then((list) => {
        if (!live) return;
        const now = performance.now() / 1000;
        const r: Record<string, Rates> = {};
        const next: Record<string, Sample> = {};
        for (const v of list) {
          const s = sampleOf(v, now);
          const p = prev.current[v.name];
          if (s) next[v.name] = s;
          if (s && p && s.t > p.t && v.state === 'running' && s.cpu >= p.cpu && s.ops >= p.ops) {
            const dt = s.t - p.t;
            r[v.name] = {
              cpu: Math.min(100, ((s.cpu - p.cpu) / 1e9 / dt / Math.max(1, v.vcpus)) * 100),
              iops: (s.ops - p.ops) / dt,
              bps: (s.bytes - p.bytes) / dt,
            };
          }
        }
        prev.current = next;
        setVms(list);
        setRates(r);
        setError(null);
      })
      .catch((e) => live && setError(explain(e)));
    const t = setTimeout(() => setTick((x) => x + 1), 2000);
    return () => {
      live = false;
      clearTimeout(t);
    };
  }, [tick]);
  return { vms, rates, error, reload: () => setTick((x) => x + 1) };
}

const STATE_WORDS: Record<string, string> = {
  defined: 'not started',
  running: 'running',
  paused: 'paused',
  stopped: 'stopped',
};

function fmtRate(r: Rates | undefined, k: keyof Rates, f: (n: number) => string) {
  const v = r?.[k];
  return v == null ? '–' : f(v);
}

/** A VM's details: disks with live counters, network cards (vmnet.ts), snapshots taken of all
 * disks at once, roll back, clone. */
function VmDisks({ vm, canWrite, reload }: { vm: VmView; canWrite: boolean; reload: () => void }) {
  const [snaps, setSnaps] = useState<Record<string, string[]>>({});
  const [steps, setSteps] = useState<Step[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [note, setNote] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    Promise.all(vm.disks.map((d) => diskApi.snapshots(d).then((s) => [d, s.map((x: any) => x.name)] as const)))
      .then((pairs) => setSnaps(Object.fromEntries(pairs)))
      .catch((e) => setError(explain(e)));
  }, [vm.name, vm.disks.join(','), tick]);
  // Snapshots present on every disk of the VM (taken by "Snapshot VM").
  const common = vm.disks.length ? (snaps[vm.disks[0]] ?? []).filter((s) => vm.disks.every((d) => snaps[d]?.includes(s))) : [];
  const stats = new Map((vm.stats?.disks ?? []).map((d) => [d.id, d]));

  /** Run labelled steps in order; stop at the first failure and say why. */
  const runSteps = async (what: string, plan: { label: string; f: (upd: (detail: string) => void) => Promise<any> }[]) => {
    setError(null);
    setNote(null);
    setBusy(true);
    const st: Step[] = plan.map((p) => ({ label: p.label, state: 'waiting' }));
    setSteps([...st]);
    let i = 0;
    try {
      for (; i < plan.length; i++) {
        st[i] = { ...st[i], state: 'running' };
        setSteps([...st]);
        await plan[i].f((detail) => {
          st[i] = { ...st[i], detail };
          setSteps([...st]);
        });
        st[i] = { ...st[i], state: 'done', detail: undefined };
        setSteps([...st]);
      }
      setNote(`${what}: done.`);
    } catch (e) {
      st[i] = { ...st[i], state: 'failed' };
      setSteps([...st]);
      setError(`${what} failed at “${plan[i].label}”. ${explain(e)}`);
    } finally {
      setBusy(false);
      setTick((x) => x + 1);
      reload();
    }
  };
  const taskDetail = (upd: (d: string) => void) => (t: any) => upd(`task ${t.id}${t.progress != null ? `, ${Math.round(t.progress * 100)}%` : ''}`);

  const snapshotVm = () => {
    const n = prompt(`Snapshot name for all disks of ${vm.name}:`, `snap-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}`);
    if (!n) return;
    runSteps(`Snapshot ${vm.name}`, vm.disks.map((d) => ({ label: `Snapshot ${d}@${n}`, f: () => diskApi.snapshot(d, n) })));
  };
  const rollback = (s: string) => {
    if (vm.state === 'running' || vm.state === 'paused') {
      setError(`Stop ${vm.name} before rolling its disks back: a running guest would see its disks change under it.`);
      return;
    }
    if (!confirm(`Roll every disk of ${vm.name} back to ${s}? Writes since then are lost.`)) return;
    runSteps(`Roll back ${vm.name} to ${s}`, vm.disks.map((d) => ({ label: `Roll back ${d} to ${s}`, f: (u) => diskApi.rollback(d, s, taskDetail(u)) })));
  };
  const cloneVm = (s: string | null) => {
    const n = prompt(`Name of the new VM (a clone of ${vm.name}${s ? '@' + s : ''}):`, `${vm.name}-clone`);
    if (!n) return;
    const names = vm.disks.map((d) => `${n}-${d}`.slice(0, 64));
    runSteps(`Clone ${vm.name} to ${n}`, [
      ...vm.disks.map((d, i) => ({ label: `Clone ${d}${s ? '@' + s : ''} to ${names[i]}`, f: (u: (d: string) => void) => diskApi.clone(d, names[i], s, taskDetail(u)) })),
      { label: `Define VM ${n}`, f: () => vmApi.create({ name: n, vcpus: vm.vcpus, memory_mib: vm.memory_mib, disks: names, kernel: vm.kernel, cmdline: vm.cmdline || undefined }) },
    ]);
  };

  return html`<div class="vm-disks">
    <${ErrorBox} error=${error} />
    <${Note} text=${note} />
    <${StepList} steps=${steps} label=${`progress for ${vm.name}`} />
    <dl class="facts">
      <dt>Kernel</dt><dd class="mono">${vm.kernel}</dd>
      <dt>Command line</dt><dd class="mono">${vm.cmdline || '(empty)'}</dd>
      <dt>Created</dt><dd>${fmtTime(vm.created_unix)}</dd>
      <dt>Network cards</dt><dd class="mono" data-fact="nics">${(vm.nics ?? []).map((n) => `${n.id}: ${n.tap} ${n.mac}${bridgeWords(n.bridge, false)}${n.vlan != null ? ` VLAN ${n.vlan}` : ''}`).join('; ') || 'none'}</dd>
      <dt>Last stop</dt><dd>${vm.last_exit ?? '–'}</dd>
      <dt>Memory in use</dt><dd>${vm.stats ? fmtBytes(vm.stats.memory_bytes) : '–'}</dd>
    </dl>
    ${vm.disks.length === 0 ? html`<p class="muted">${vm.name} has no disks.</p>` : html`<div class="table-wrap"><table aria-label=${`disks of ${vm.name}`}>
      <thead><tr><th scope="col">Disk</th><th scope="col">Reads</th><th scope="col">Writes</th><th scope="col">Mean latency</th><th scope="col">Errors</th><th scope="col">Snapshots</th></tr></thead>
      <tbody>${vm.disks.map((d) => {
        const s = stats.get(d);
        return html`<tr><td>${d}</td>
          <td>${s ? `${s.read_ops} (${fmtBytes(s.read_bytes)})` : '–'}</td>
          <td>${s ? `${s.write_ops} (${fmtBytes(s.write_bytes)})` : '–'}</td>
          <td>${s ? `${(s.mean_latency_ns / 1000).toFixed(0)} µs` : '–'}</td>
          <td>${s ? s.errors : '–'}</td>
          <td>${(snaps[d] ?? []).join(', ') || '–'}</td></tr>`;
      })}</tbody>
    </table></div>`}
    <${VmNics} vm=${vm} />
    ${canWrite ? html`<div class="buttons">
      ${vm.disks.length ? html`<button type="button" disabled=${busy} onClick=${snapshotVm}>Snapshot all disks</button>` : null}
      <button type="button" disabled=${busy} onClick=${() => cloneVm(null)}>Clone VM</button>
    </div>` : null}
    ${common.length ? html`<ul class="vm-snaps" aria-label=${`snapshots of ${vm.name}`}>
      ${common.map((s) => html`<li><span>${s}</span>
        ${canWrite ? html`<button type="button" disabled=${busy} onClick=${() => cloneVm(s)}>Clone VM from ${s}</button>
        <button type="button" disabled=${busy} onClick=${() => rollback(s)}>Roll back to ${s}</button>` : null}</li>`)}
    </ul>` : null}
  </div>`;
}

export function Vms({ role }: { role: string }) {
  const { vms, rates, error, reload } = useVms();
  // The list names every member's VMs; the cluster record says which ones it could not.
  const cluster = useLoad<any>('/cluster', 10000);
  const act = useAction(() => { reload(); cluster.reload(); });
  const [wizard, setWizard] = useState(false);
  const [open, setOpen] = useState<string | null>(null);
  const [console, setConsole] = useState<string | null>(null);
  const [editing, setEditing] = useState<string | null>(null);
  const canWrite = role !== 'read_only';
  const items = vms ?? [];
  const consoleVm = items.find((v) => v.name === console);
  const others = vms && cluster.data ? elsewhere(cluster.data.vms, items.map((v) => v.name)) : [];
  const spans = spansMembers(items);
  const cols = spans ? 9 : 8;
  const power = (v: VmView) => {
    const n = v.name;
    const running = v.state === 'running' || v.state === 'paused';
    return html`
      ${!running ? html`<button type="button" onClick=${() => act.run(`Start ${n}`, () => vmApi.start(n))}>Start</button>` : null}
      ${running ? html`<button type="button" onClick=${() => act.run(`Shut down ${n}`, () => vmApi.stop(n, false, 30000))} title="ask the guest to shut down; forced after 30 s">Shut down</button>
        <button type="button" class="danger" onClick=${() => confirm(`Force ${n} off now? The guest gets no chance to save anything.`) && act.run(`Force stop ${n}`, () => vmApi.stop(n, true))}>Force stop</button>` : null}
      ${v.state === 'running' ? html`<button type="button" onClick=${() => act.run(`Pause ${n}`, () => vmApi.pause(n))}>Pause</button>` : null}
      ${v.state === 'paused' ? html`<button type="button" onClick=${() => act.run(`Resume ${n}`, () => vmApi.resume(n))}>Resume</button>` : null}
      ${!running ? html`<button type="button" title="move the stopped VM and its disks to another cluster member" onClick=${() => { const to = prompt(`Move VM ${n} with all its disks to which cluster member (name or id)?`); if (to && to.trim()) act.run(`Move ${n} to ${to.trim()}`, () => vmApi.move(n, to.trim())); }}>Move</button>` : null}
      ${!running ? html`<button type="button" class="danger" onClick=${() => confirm(`Delete VM ${n}? Its definition is removed; its virtual disks are kept.`) && act.run(`Delete ${n}`, () => vmApi.remove(n)).then(() => { if (console === n) setConsole(null); })}>Delete</button>` : null}`;
  };
  return html`<section aria-labelledby="vms-h">
    <h2 id="vms-h">Virtual machines</h2>
    <${Note} text=${elsewhereNote('VMs', others)} />
    <${ErrorBox} error=${error || act.error} />
    <${Note} text=${act.done} />
    <${Progress} running=${act.running} />
    ${canWrite && !wizard ? html`<p><button type="button" onClick=${() => setWizard(true)}>New VM</button></p>` : null}
    ${wizard ? html`<${CreateWizard} onCancel=${() => setWizard(false)} onDone=${(n: string) => { setWizard(false); reload(); setOpen(n); }} />` : null}
    ${vms && items.length === 0 ? html`<p class="empty">${others.length ? 'No VMs listed.' : 'No VMs yet.'}</p>` : null}
    ${items.length > 0 ? html`<div class="table-wrap"><table class="vm-table" aria-label="virtual machines">
      <thead><tr><th scope="col">Name</th>${spans ? html`<th scope="col">Node</th>` : null}<th scope="col">State</th><th scope="col">vCPUs</th><th scope="col">Memory</th><th scope="col">CPU</th><th scope="col">Disk IOPS</th><th scope="col">Disk I/O</th><th scope="col">Actions</th></tr></thead>
      <tbody>${items.map((v) => html`<tr data-vm=${v.name} data-state=${v.state}>
          <td>${v.name}${v.description ? html`<br /><small class="muted">${v.description}</small>` : null}${v.operation ? html`<br /><small class="note" role="status">${v.operation}…</small>` : null}</td>
          ${spans ? html`<td data-node=${nodeWord(v.node)}>${nodeWord(v.node)}</td>` : null}
          <td class=${'vm-state ' + v.state}>${STATE_WORDS[v.state] ?? v.state}${v.last_exit && v.state === 'stopped' ? html` <small class="muted">(${v.last_exit})</small>` : null}</td>
          <td>${v.vcpus}</td><td>${v.memory_mib} MiB</td>
          <td>${fmtRate(rates[v.name], 'cpu', (x) => `${x.toFixed(0)} %`)}</td>
          <td>${fmtRate(rates[v.name], 'iops', (x) => x.toFixed(0))}</td>
          <td>${fmtRate(rates[v.name], 'bps', (x) => `${fmtBytes(x)}/s`)}</td>
          <td class="actions">
            ${canWrite ? power(v) : null}
            ${canWrite ? html`<button type="button" aria-expanded=${editing === v.name} onClick=${() => setEditing(editing === v.name ? null : v.name)}>Edit</button>` : null}
            <button type="button" onClick=${() => setConsole(console === v.name ? null : v.name)} aria-pressed=${console === v.name}>Console</button>
            <button type="button" aria-expanded=${open === v.name} title="disks, network cards and snapshots" onClick=${() => setOpen(open === v.name ? null : v.name)}>Details</button>
          </td>
        </tr>
        ${editing === v.name ? html`<tr><td colspan=${cols}><${VmEdit} key=${v.name} vm=${v} onCancel=${() => setEditing(null)} onDone=${(n: string) => { setEditing(null); if (open === v.name) setOpen(n); reload(); }} /></td></tr>` : null}
        ${open === v.name ? html`<tr><td colspan=${cols}><${VmDisks} vm=${v} canWrite=${canWrite} reload=${reload} /></td></tr>` : null}`)}
      </tbody>
    </table></div>` : null}
    ${console ? html`<${Console} key=${console} vm=${console} node=${consoleVm?.node} onClose=${() => setConsole(null)} />` : null}
  </section>`;
}
