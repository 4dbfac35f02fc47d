// The VM edit form: name, description, vCPUs, memory, command line, disk order (the first disk
// boots) and network cards (host tap device, MAC, bridge, VLAN). Sends only what changed (PATCH /vms/{name});
// the node refuses changes that need the VM stopped while it runs, and the form says so before
// asking. The checks live in ../vmeditfmt.ts.
import { useState } from 'preact/hooks';
import { explain } from '../api';
import { html, ErrorBox, Field } from '../ui';
import { vmApi, VmView } from '../vmapi';
import { editBody, formOf, moved, needsStop, MAX_NICS, VmEditForm } from '../vmeditfmt';

export function VmEdit({ vm, onDone, onCancel }: { vm: VmView; onDone: (name: string) => void; onCancel: () => void }) {
  const [f, setF] = useState<VmEditForm>(() => formOf(vm));
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const running = vm.state === 'running' || vm.state === 'paused';
  const set = (k: keyof VmEditForm) => (e: any) => setF({ ...f, [k]: e.currentTarget.value });
  const setNic = (i: number, k: 'tap' | 'mac' | 'bridge' | 'vlan', v: string) => setF({ ...f, nics: f.nics.map((n, j) => (j === i ? { ...n, [k]: v } : n)) });
  const save = async (e: Event) => {
    e.preventDefault();
    setError(null);
    const r = editBody(vm, f);
    if ('error' in r) {
      setError(r.error);
      return;
    }
    const stop = needsStop(r.body);
    if (running && stop.length) {
      setError(`Stop ${vm.name} first: its ${stop.join(', ')} can only change while it is stopped.`);
      return;
    }
    setBusy(true);
    try {
      const v = await vmApi.update(vm.name, r.body);
      onDone(v?.name ?? vm.name);
    } catch (err) {
      setError(`Saving ${vm.name} failed. ${explain(err)}`);
    } finally {
      setBusy(false);
    }
  };
  const id = (s: string) => `ve-${s}`;
  return html`<form class="vm-edit" aria-label=${`edit ${vm.name}`} onSubmit=${save} noValidate>
    <h3>Edit ${vm.name}</h3>
    ${running ? html`<p class="note">${vm.name} is ${vm.state}: only the description can change until it is stopped.</p>` : null}
    <${ErrorBox} error=${error} />
    <${Field} label="Name" id=${id('name')}><input id=${id('name')} value=${f.name} onInput=${set('name')} disabled=${running} /><//>
    <${Field} label="Description" id=${id('desc')}><input id=${id('desc')} value=${f.description} onInput=${set('description')} maxLength="1024" /><//>
    <${Field} label="vCPUs" id=${id('vcpus')}><input id=${id('vcpus')} type="number" min="1" max="32" value=${f.vcpus} onInput=${set('vcpus')} disabled=${running} /><//>
    <${Field} label="Memory (MiB)" id=${id('mem')}><input id=${id('mem')} type="number" min="16" value=${f.memory_mib} onInput=${set('memory_mib')} disabled=${running} /><//>
    <${Field} label="Kernel command line" id=${id('cmdline')}><input id=${id('cmdline')} class="mono" value=${f.cmdline} onInput=${set('cmdline')} disabled=${running} /><//>
    <fieldset>
      <legend>Disk order (the first disk boots)</legend>
      ${f.disks.length === 0 ? html`<p class="muted">No disks.</p>` : html`<ol class="edit-list" aria-label="disk order">
        ${f.disks.map((d, i) => html`<li data-disk=${d}><span>${d}${i === 0 ? html` <span class="badge">boot</span>` : null}</span>
          <button type="button" aria-label=${`move ${d} up`} disabled=${running || i === 0} onClick=${() => setF({ ...f, disks: moved(f.disks, i, -1) })}>↑</button>
          <button type="button" aria-label=${`move ${d} down`} disabled=${running || i === f.disks.length - 1} onClick=${() => setF({ ...f, disks: moved(f.disks, i, 1) })}>↓</button>
        </li>`)}
      </ol>`}
    </fieldset>
    <fieldset>
      <legend>Network cards</legend>
      ${f.nics.length === 0 ? html`<p class="muted">No network cards.</p>` : null}
      ${f.nics.map((n, i) => html`<div class="nic-row" data-nic=${i}>
        <${Field} label=${`Card ${i + 1} tap device`} id=${id(`tap-${i}`)} hint="a tap device on the node">
          <input id=${id(`tap-${i}`)} value=${n.tap} maxLength="15" disabled=${running} onInput=${(e: any) => setNic(i, 'tap', e.currentTarget.value)} /><//>
        <${Field} label=${`Card ${i + 1} MAC address`} id=${id(`mac-${i}`)} hint="empty: chosen by the node">
          <input id=${id(`mac-${i}`)} class="mono" value=${n.mac} placeholder="02:00:00:00:00:01" disabled=${running} onInput=${(e: any) => setNic(i, 'mac', e.currentTarget.value)} /><//>
        <${Field} label=${`Card ${i + 1} bridge`} id=${id(`br-${i}`)} hint="an existing bridge on the node the tap joins at start; empty: the node's default bridge, if it has one; none: no bridge (a plain tap)">
          <input id=${id(`br-${i}`)} value=${n.bridge} maxLength="15" disabled=${running} onInput=${(e: any) => setNic(i, 'bridge', e.currentTarget.value)} /><//>
        <${Field} label=${`Card ${i + 1} VLAN`} id=${id(`vlan-${i}`)} hint="1-4094: the tap's bridge port carries only this VLAN, untagged to the VM (needs a bridge, not none); empty: none">
          <input id=${id(`vlan-${i}`)} value=${n.vlan ?? ''} inputMode="numeric" maxLength="4" disabled=${running} onInput=${(e: any) => setNic(i, 'vlan', e.currentTarget.value)} /><//>
        <button type="button" class="danger" disabled=${running} onClick=${() => setF({ ...f, nics: f.nics.filter((_, j) => j !== i) })}>Remove card ${i + 1}</button>
      </div>`)}
      ${f.nics.length < MAX_NICS ? html`<button type="button" disabled=${running} onClick=${() => setF({ ...f, nics: [...f.nics, { tap: '', mac: '', bridge: '', vlan: '' }] })}>Add a network card</button>` : null}
    </fieldset>
    <div class="buttons">
      <button type="submit" disabled=${busy}>${busy ? 'Saving…' : 'Save changes'}</button>
      <button type="button" onClick=${onCancel} disabled=${busy}>Cancel</button>
    </div>
  </form>`;
}
