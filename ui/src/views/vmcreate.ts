// The VM create wizard: basics, disks (new, existing, or a clone), boot and network cards, review. Creating runs
// as a list of steps with progress; if a step fails, disks this run created are deleted again
// so a failed create leaves nothing half-made behind.
import { useEffect, useRef, useState } from 'preact/hooks';
import { explain } from '../api';
import { html, ErrorBox, Field } from '../ui';
import { diskApi, Step, vmApi } from '../vmapi';
import { bridgeWords, nicsBody, NicBody, NicRow, MAX_NICS } from '../vmeditfmt';

type DiskMode = 'new' | 'existing' | 'clone';
interface DiskRow {
  mode: DiskMode;
  name: string;
  size: string;
  source: string;
  snapshot: string;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const STEPS = ['Basics', 'Disks', 'Boot & network', 'Review'];

export function StepList({ steps, label }: { steps: Step[]; label: string }) {
  if (!steps.length) return null;
  const mark = { waiting: '…', running: '⟳', done: '✓', failed: '✗', skipped: '–' } as const;
  return html`<ol class="steps" aria-label=${label} aria-live="polite">
    ${steps.map((s) => html`<li class=${'step-' + s.state}>
      <span aria-hidden="true">${mark[s.state]}</span> ${s.label}
      <span class="visually-hidden">: ${s.state}</span>${s.detail ? html` <small class="muted">${s.detail}</small>` : null}
    </li>`)}
  </ol>`;
}

function SnapshotPick({ source, value, onPick, id }: { source: string; value: string; onPick: (s: string) => void; id: string }) {
  const [snaps, setSnaps] = useState<any[]>([]);
  useEffect(() => {
    if (!source) return;
    diskApi.snapshots(source).then(setSnaps).catch(() => setSnaps([]));
  }, [source]);
  return html`<select id=${id} value=${value} onChange=${(e: any) => onPick(e.currentTarget.value)}>
    <option value="">the disk as it is now</option>
    ${snaps.map((s) => html`<option value=${s.name}>snapshot ${s.name}</option>`)}
  </select>`;
}

export function CreateWizard({ onDone, onCancel }: { onDone: (name: string) => void; onCancel: () => void }) {
  const [step, setStep] = useState(0);
  const [name, setName] = useState('');
  const [vcpus, setVcpus] = useState('1');
  const [mem, setMem] = useState('512');
  const [disks, setDisks] = useState<DiskRow[]>([]);
  const [kernel, setKernel] = useState('');
  const [cmdline, setCmdline] = useState('console=ttyS0');
  const [nics, setNics] = useState<NicRow[]>([]);
  const [startAfter, setStartAfter] = useState(false);
  const [existing, setExisting] = useState<any[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [steps, setSteps] = useState<Step[]>([]);
  const [busy, setBusy] = useState(false);
  const heading = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    diskApi.list().then(setExisting).catch((e) => setError(explain(e)));
  }, []);
  useEffect(() => heading.current?.focus(), [step]);

  const setNic = (i: number, n: Partial<NicRow>) => setNics(nics.map((x, j) => (j === i ? { ...x, ...n } : x)));
  const setDisk = (i: number, d: Partial<DiskRow>) => setDisks(disks.map((x, j) => (j === i ? { ...x, ...d } : x)));
  const addDisk = () => setDisks([...disks, { mode: 'new', name: `${name || 'vm'}-disk${disks.length}`, size: '10G', source: existing[0]?.name ?? '', snapshot: '' }]);

  /** Words for what is wrong with the current step, or null. */
  const check = (s: number): string | null => {
    if (s === 0) {
      if (!NAME_RE.test(name)) return 'The name must be 1-64 letters, digits, dots, dashes or underscores, starting with a letter or digit.';
      const v = Number(vcpus);
      if (!Number.isInteger(v) || v < 1 || v > 32) return 'A VM has 1 to 32 vCPUs.';
      const m = Number(mem);
      if (!Number.isInteger(m) || m < 16 || m > 262144) return 'Memory is 16 MiB to 256 GiB (262144 MiB).';
    }
    if (s === 1) {
      if (disks.length > 16) return 'A VM has at most 16 disks.';
      const names = disks.map((d) => (d.mode === 'existing' ? d.source : d.name));
      for (const [i, d] of disks.entries()) {
        if (d.mode !== 'existing' && !NAME_RE.test(d.name)) return `Disk ${i + 1}: the new disk needs a valid name.`;
        if (d.mode !== 'new' && !d.source) return `Disk ${i + 1}: choose a virtual disk.`;
        if (d.mode === 'new' && !/^\d+(\.\d+)?\s*[KMGTP]?i?B?$/i.test(d.size.trim())) return `Disk ${i + 1}: size like 512M or 10G.`;
        if (d.mode !== 'existing' && existing.some((x) => x.name === d.name)) return `Disk ${i + 1}: a virtual disk named ${d.name} already exists; pick it as an existing disk or choose another name.`;
        if (names.indexOf(names[i]) !== i) return `Disk ${i + 1}: ${names[i]} is listed twice.`;
      }
      // A VM runs where its disks are: a new disk is made on this node, an existing one (or a
      // clone of it) is on its source's member.
      const where = disks.map((d) => (d.mode === 'new' ? null : existing.find((x) => x.name === d.source)?.node ?? null));
      if (new Set(where).size > 1) {
        const says = disks.map((d, i) => `${d.mode === 'new' ? d.name : d.source} on ${where[i] ? `member ${where[i]}` : 'this node'}`);
        return `A VM's disks must all be on one cluster member, and these are not (${says.join(', ')}). Use disks of one member, or move one first.`;
      }
    }
    if (s === 2) {
      if (!kernel.startsWith('/')) return 'The kernel is an absolute path of a file on the node, like /var/lib/cairn/vmlinuz.';
      if (cmdline.length > 2048) return 'The kernel command line is at most 2048 characters.';
      const n = nicsBody(nics);
      if ('error' in n) return n.error;
    }
    return null;
  };
  const next = () => {
    const e = check(step);
    setError(e);
    if (!e) setStep(step + 1);
  };

  const create = async () => {
    for (let s = 0; s < 3; s++) {
      const e = check(s);
      if (e) {
        setError(e);
        setStep(s);
        return;
      }
    }
    setError(null);
    setBusy(true);
    const plan: Step[] = [
      ...disks.map((d): Step => ({
        label: d.mode === 'new' ? `Create disk ${d.name} (${d.size})` : d.mode === 'clone' ? `Clone ${d.source}${d.snapshot ? '@' + d.snapshot : ''} to ${d.name}` : `Use disk ${d.source}`,
        state: d.mode === 'existing' ? 'skipped' : 'waiting',
      })),
      { label: `Define VM ${name}`, state: 'waiting' },
      ...(startAfter ? [{ label: `Start ${name}`, state: 'waiting' } as Step] : []),
    ];
    const upd = (i: number, s: Partial<Step>) => {
      plan[i] = { ...plan[i], ...s };
      setSteps([...plan]);
    };
    setSteps([...plan]);
    const made: string[] = [];
    let i = 0;
    try {
      for (const d of disks) {
        if (d.mode !== 'existing') {
          upd(i, { state: 'running' });
          if (d.mode === 'new') await diskApi.create(d.name, d.size.trim());
          else await diskApi.clone(d.source, d.name, d.snapshot || null, (t) => upd(i, { detail: `task ${t.id}${t.progress != null ? `, ${Math.round(t.progress * 100)}%` : ''}` }));
          made.push(d.name);
          upd(i, { state: 'done', detail: undefined });
        }
        i++;
      }
      upd(i, { state: 'running' });
      await vmApi.create({
        name,
        vcpus: Number(vcpus),
        memory_mib: Number(mem),
        disks: disks.map((d) => (d.mode === 'existing' ? d.source : d.name)),
        kernel,
        cmdline: cmdline || undefined,
        ...(nics.length ? { nics: (nicsBody(nics) as { nics: NicBody[] }).nics } : {}),
      });
      upd(i, { state: 'done' });
      i++;
      if (startAfter) {
        upd(i, { state: 'running' });
        await vmApi.start(name);
        upd(i, { state: 'done' });
      }
      setBusy(false);
      onDone(name);
    } catch (e) {
      upd(i, { state: 'failed' });
      let msg = `Creating ${name} failed. ${explain(e)}`;
      if (made.length && !(startAfter && i === plan.length - 1)) {
        const left: string[] = [];
        for (const d of made) await diskApi.remove(d).catch(() => left.push(d));
        msg += left.length ? ` These new disks could not be removed: ${left.join(', ')}.` : ' The disks created for it were removed again.';
      }
      setError(msg);
      setBusy(false);
    }
  };

  const diskRow = (d: DiskRow, i: number) => html`<fieldset class="disk-row">
    <legend>Disk ${i + 1}</legend>
    <${Field} label="Kind" id=${`wd-mode-${i}`}><select id=${`wd-mode-${i}`} value=${d.mode} onChange=${(e: any) => setDisk(i, { mode: e.currentTarget.value })}>
      <option value="new">a new empty disk</option><option value="existing">an existing disk</option><option value="clone">a clone of a disk</option>
    </select></${Field}>
    ${d.mode !== 'new' ? html`<${Field} label=${d.mode === 'clone' ? 'Clone of' : 'Virtual disk'} id=${`wd-src-${i}`}><select id=${`wd-src-${i}`} value=${d.source} onChange=${(e: any) => setDisk(i, { source: e.currentTarget.value, snapshot: '' })}>
        <option value="">choose…</option>
        ${existing.map((x) => html`<option value=${x.name}>${x.name}${x.node ? ` (on ${x.node})` : ''}</option>`)}
      </select></${Field}>` : null}
    ${d.mode === 'clone' ? html`<${Field} label="From" id=${`wd-snap-${i}`}><${SnapshotPick} id=${`wd-snap-${i}`} source=${d.source} value=${d.snapshot} onPick=${(s: string) => setDisk(i, { snapshot: s })} /></${Field}>` : null}
    ${d.mode !== 'existing' ? html`<${Field} label="New disk name" id=${`wd-name-${i}`}><input id=${`wd-name-${i}`} value=${d.name} onInput=${(e: any) => setDisk(i, { name: e.currentTarget.value })} /></${Field}>` : null}
    ${d.mode === 'new' ? html`<${Field} label="Size" id=${`wd-size-${i}`} hint="like 512M, 10G"><input id=${`wd-size-${i}`} value=${d.size} onInput=${(e: any) => setDisk(i, { size: e.currentTarget.value })} /></${Field}>` : null}
    <button type="button" class="danger" onClick=${() => setDisks(disks.filter((_, j) => j !== i))}>Remove disk ${i + 1}</button>
  </fieldset>`;

  let body;
  if (step === 0) {
    body = html`<div class="grid2">
      <${Field} label="VM name" id="w-name"><input id="w-name" value=${name} onInput=${(e: any) => setName(e.currentTarget.value)} maxlength="64" autocomplete="off" /></${Field}>
      <${Field} label="vCPUs" id="w-vcpus" hint="1 to 32"><input id="w-vcpus" type="number" min="1" max="32" value=${vcpus} onInput=${(e: any) => setVcpus(e.currentTarget.value)} /></${Field}>
      <${Field} label="Memory (MiB)" id="w-mem" hint="16 MiB to 256 GiB"><input id="w-mem" type="number" min="16" max="262144" value=${mem} onInput=${(e: any) => setMem(e.currentTarget.value)} /></${Field}>
    </div>`;
  } else if (step === 1) {
    body = html`<div>
      <p class="muted">Disks are attached as virtio-blk devices in this order. A VM may have none (a kernel that needs no disk).</p>
      ${disks.map(diskRow)}
      <button type="button" onClick=${addDisk} disabled=${disks.length >= 16}>Add a disk</button>
    </div>`;
  } else if (step === 2) {
    body = html`<div class="grid2">
      <${Field} label="Kernel file on the node" id="w-kernel" hint="absolute path of a PVH ELF or bzImage on the node that runs the VM: the member holding its disks"><input id="w-kernel" value=${kernel} onInput=${(e: any) => setKernel(e.currentTarget.value)} placeholder="/var/lib/cairn/images/vmlinuz" /></${Field}>
      <${Field} label="Kernel command line" id="w-cmdline" hint="one line; console=ttyS0 sends the console to the browser"><input id="w-cmdline" value=${cmdline} onInput=${(e: any) => setCmdline(e.currentTarget.value)} /></${Field}>
    </div>
    <fieldset>
      <legend>Network cards</legend>
      <p class="muted">Each card is a tap device on the node, made when the VM starts; with a bridge (one that exists on the node) the tap joins it, left empty the node's default bridge if it has one (an appliance's bridge over its uplink), and with "none" no bridge (a plain tap, for a host-only network); with a VLAN its port on the bridge carries that VLAN only, untagged to the VM.</p>
      ${nics.map((n, i) => html`<div class="nic-row" data-nic=${i}>
        <${Field} label=${`Card ${i + 1} tap device`} id=${`wn-tap-${i}`}><input id=${`wn-tap-${i}`} value=${n.tap} maxLength="15" onInput=${(e: any) => setNic(i, { tap: e.currentTarget.value })} /></${Field}>
        <${Field} label=${`Card ${i + 1} MAC address`} id=${`wn-mac-${i}`} hint="empty: chosen by the node"><input id=${`wn-mac-${i}`} class="mono" value=${n.mac} placeholder="02:00:00:00:00:01" onInput=${(e: any) => setNic(i, { mac: e.currentTarget.value })} /></${Field}>
        <${Field} label=${`Card ${i + 1} bridge`} id=${`wn-br-${i}`} hint="empty: the node's default, if any; none: no bridge"><input id=${`wn-br-${i}`} value=${n.bridge} maxLength="15" onInput=${(e: any) => setNic(i, { bridge: e.currentTarget.value })} /></${Field}>
        <${Field} label=${`Card ${i + 1} VLAN`} id=${`wn-vlan-${i}`} hint="1-4094, needs a bridge (not none); empty: none"><input id=${`wn-vlan-${i}`} value=${n.vlan ?? ''} inputMode="numeric" maxLength="4" onInput=${(e: any) => setNic(i, { vlan: e.currentTarget.value })} /></${Field}>
        <button type="button" class="danger" onClick=${() => setNics(nics.filter((_, j) => j !== i))}>Remove card ${i + 1}</button>
      </div>`)}
      ${nics.length < MAX_NICS ? html`<button type="button" onClick=${() => setNics([...nics, { tap: `${(name || 'vm').slice(0, 11)}-n${nics.length}`, mac: '', bridge: '', vlan: '' }])}>Add a network card</button>` : null}
    </fieldset>`;
  } else {
    body = html`<div>
      <dl class="facts">
        <dt>Name</dt><dd>${name}</dd>
        <dt>vCPUs</dt><dd>${vcpus}</dd>
        <dt>Memory</dt><dd>${mem} MiB</dd>
        <dt>Disks</dt><dd>${disks.length ? disks.map((d) => (d.mode === 'new' ? `${d.name} (new, ${d.size})` : d.mode === 'clone' ? `${d.name} (clone of ${d.source}${d.snapshot ? '@' + d.snapshot : ''})` : d.source)).join(', ') : 'none'}</dd>
        <dt>Kernel</dt><dd class="mono">${kernel}</dd>
        <dt>Command line</dt><dd class="mono">${cmdline || '(empty)'}</dd>
        <dt>Network cards</dt><dd class="mono">${nics.length ? nics.map((n) => `${n.tap.trim()}${n.mac.trim() ? ' ' + n.mac.trim() : ''}${bridgeWords(n.bridge, true)}${(n.vlan ?? '').trim() ? ' VLAN ' + (n.vlan ?? '').trim() : ''}`).join('; ') : 'none'}</dd>
      </dl>
      <label class="check"><input type="checkbox" checked=${startAfter} onChange=${(e: any) => setStartAfter(e.currentTarget.checked)} /> Start the VM after creating it</label>
    </div>`;
  }
  return html`<form class="wizard" aria-labelledby="wiz-h" onSubmit=${(e: Event) => { e.preventDefault(); if (step < 3) next(); else create(); }}>
    <h3 id="wiz-h" tabindex="-1" ref=${heading}>New VM — step ${step + 1} of 4: ${STEPS[step]}</h3>
    <ol class="wizard-steps" aria-hidden="true">${STEPS.map((s, i) => html`<li class=${i === step ? 'current' : i < step ? 'past' : ''}>${s}</li>`)}</ol>
    <${ErrorBox} error=${error} />
    ${body}
    <${StepList} steps=${steps} label="creating the VM" />
    <div class="buttons">
      <button type="button" onClick=${onCancel} disabled=${busy}>Cancel</button>
      ${step > 0 ? html`<button type="button" onClick=${() => { setError(null); setStep(step - 1); }} disabled=${busy}>Back</button>` : null}
      <button type="submit" disabled=${busy}>${step < 3 ? 'Next' : busy ? 'Creating…' : 'Create VM'}</button>
    </div>
  </form>`;
}
