// Cluster membership from the UI (admin only): a one-time join token for a data node or a
// witness, shown once with copy buttons and the exact `cairn cluster join` command; removing a
// member after a confirmation, with the node's own words when it refuses (a member that still
// owns virtual disks or VMs); telling this node a member's new address when every member's
// address changed at once. All go through the same node functions as `cairn cluster`.
import { useState } from 'preact/hooks';
import { api, explain } from '../api';
import { html, ErrorBox, Field } from '../ui';
import { drainLeft, joinCommand } from '../clusterfmt';

interface TokenView {
  token: string;
  role: string;
  expires_in_secs: number;
  address: string;
}

const TTLS: [number, string][] = [
  [600, '10 minutes'],
  [3600, '1 hour'],
  [86400, '1 day'],
  [7 * 86400, '7 days'],
];

/** Copy `text`; the Clipboard API where the page may use it, else a selected text field. */
async function copy(text: string, fallback: HTMLInputElement | null): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (!fallback) return false;
    fallback.select();
    return document.execCommand('copy');
  }
}

function CopyField({ label, id, value }: { label: string; id: string; value: string }) {
  const [copied, setCopied] = useState<string | null>(null);
  return html`<${Field} label=${label} id=${id}>
    <div class="copy-row">
      <input id=${id} class="mono" readOnly value=${value} onFocus=${(e: any) => e.currentTarget.select()} />
      <button type="button" onClick=${async () => setCopied((await copy(value, document.getElementById(id) as HTMLInputElement)) ? 'Copied.' : 'Copy it by hand: the browser refused.')}>Copy ${label.toLowerCase()}</button>
    </div>
    ${copied ? html`<small role="status">${copied}</small>` : null}
  <//>`;
}

export function JoinToken() {
  const [witness, setWitness] = useState(false);
  const [ttl, setTtl] = useState(3600);
  const [tok, setTok] = useState<TokenView | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const create = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setTok(null);
    setBusy(true);
    try {
      setTok(await api<TokenView>('POST', '/cluster/tokens', { witness, ttl_secs: ttl }));
    } catch (err) {
      setError(`Creating a join token failed. ${explain(err)}`);
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="join-token" aria-label="add a node" onSubmit=${create}>
    <${ErrorBox} error=${error} />
    <${Field} label="The new machine becomes" id="jt-kind">
      <select id="jt-kind" value=${witness ? 'witness' : 'data'} onChange=${(e: any) => setWitness(e.currentTarget.value === 'witness')}>
        <option value="data">a data node (disks and VMs)</option>
        <option value="witness">a witness (a vote only, no data)</option>
      </select><//>
    <${Field} label="Token valid for" id="jt-ttl">
      <select id="jt-ttl" value=${String(ttl)} onChange=${(e: any) => setTtl(Number(e.currentTarget.value))}>
        ${TTLS.map(([s, w]) => html`<option value=${String(s)}>${w}</option>`)}
      </select><//>
    <div class="buttons"><button type="submit" disabled=${busy}>${busy ? 'Creating…' : 'Create join token'}</button></div>
    ${tok ? html`<div class="token-once" data-token-role=${tok.role}>
      <p class="note" role="status">One-time ${tok.role === 'witness' ? 'witness' : 'data node'} token, valid ${Math.round(tok.expires_in_secs / 60)} min. It is shown only now: copy it before leaving this page.</p>
      <${CopyField} label="Token" id="jt-token" value=${tok.token} />
      <${CopyField} label="Command" id="jt-cmd" value=${joinCommand(tok.address, tok.token)} />
      <small>Run the command on the new machine${tok.role === 'witness' ? ' (started with cairn witness)' : ''}; it must have nothing defined yet.</small>
    </div>` : null}
  </form>`;
}

/** The Remove button of one member row, with its confirmation and the node's answer. */
export function RemoveMember({ id, name, onDone }: { id: number; name: string; onDone: (msg: string | null, err: string | null) => void }) {
  const [busy, setBusy] = useState(false);
  const remove = async () => {
    if (!confirm(`Remove ${name} (member ${id}) from the cluster? It stops voting and its copies stop counting. The node refuses while ${name} still owns virtual disks or VMs.`)) return;
    setBusy(true);
    try {
      // A data member is drained first: while its data is re-mirrored elsewhere the node
      // answers with the cluster view (202) and the request is repeated until it is gone.
      for (;;) {
        const view = await api<any>('DELETE', `/cluster/members/${encodeURIComponent(String(id))}`);
        const left = drainLeft(view, id);
        if (left === null) break;
        onDone(`Draining ${name}: ${left} chunks still to re-mirror elsewhere…`, null);
        await new Promise((r) => setTimeout(r, 2000));
      }
      onDone(`Removed ${name} from the cluster.`, null);
    } catch (err) {
      onDone(null, `Removing ${name} failed. ${explain(err)}`);
    } finally {
      setBusy(false);
    }
  };
  return html`<button type="button" class="danger" disabled=${busy} onClick=${remove}>Remove ${name}</button>`;
}


/** The "New address" button of one member row (`cairn cluster locate`): for when every
 * member's address changed at once and none reaches another. Asks for the member's cluster
 * address now; the node checks the member answers there with its own certificate. */
export function LocateMember({ id, name, address, onDone }: { id: number; name: string; address: string; onDone: (msg: string | null, err: string | null) => void }) {
  const [busy, setBusy] = useState(false);
  const locate = async () => {
    const at = prompt(`Where is ${name} (member ${id}) now? Its cluster address, ip:port. Only needed when every member's address changed at once, so none can reach another.`, address);
    if (at === null || at.trim() === '') return;
    setBusy(true);
    try {
      await api('POST', `/cluster/members/${encodeURIComponent(String(id))}/locate`, { address: at.trim() });
      onDone(`${name} answered at ${at.trim()}: this node calls it there; the new addresses are committed once the members elect a leader.`, null);
    } catch (err) {
      onDone(null, `Setting ${name}'s address failed. ${explain(err)}`);
    } finally {
      setBusy(false);
    }
  };
  return html`<button type="button" disabled=${busy} aria-label=${`Set ${name}'s address`} title="Tell this node where the member is now (after every member's address changed)" onClick=${locate}>New address…</button>`;
}
