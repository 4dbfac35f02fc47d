// The VM edit form's logic, apart from the DOM so it can be checked on its own
// (ui/tests/vmedit.test.mjs): the form's starting values, the PATCH body holding only what
// changed (or the first mistake, in words), and which changes need the VM stopped.

export interface NicRow {
  tap: string;
  mac: string; // empty: the node keeps the tap's address or derives one
  bridge: string; // empty: the node's default bridge, if it has one (the appliance's); NO_BRIDGE: none, the tap is only brought up
  vlan?: string; // empty: the bridge's default VLAN, untagged; else 1-4094 (needs a bridge)
}

export interface VmEditForm {
  name: string;
  description: string;
  vcpus: string;
  memory_mib: string;
  cmdline: string;
  disks: string[]; // the VM's disks in the wanted order; the first boots
  nics: NicRow[];
}

export interface VmLike {
  name: string;
  description?: string;
  vcpus: number;
  memory_mib: number;
  cmdline: string;
  disks: string[];
  nics?: { id: string; tap: string; mac: string; bridge?: string | null; vlan?: number | null }[];
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const TAP_RE = /^[A-Za-z0-9._-]{1,15}$/;
const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
export const MAX_NICS = 8;
/** The bridge a card names for "no bridge, a plain tap": a card left empty joins the node's
 *  default bridge when it has one, so a card without a bridge is shown and sent back so. */
export const NO_BRIDGE = 'none';

export function formOf(vm: VmLike): VmEditForm {
  return {
    name: vm.name,
    description: vm.description ?? '',
    vcpus: String(vm.vcpus),
    memory_mib: String(vm.memory_mib),
    cmdline: vm.cmdline,
    disks: [...vm.disks],
    nics: (vm.nics ?? []).map((n) => ({ tap: n.tap, mac: n.mac, bridge: n.bridge ?? NO_BRIDGE, vlan: n.vlan != null ? String(n.vlan) : '' })),
  };
}

/** How a card's bridge reads after its tap and MAC: `bridge` as the form or the node gives it
 *  (`''` in a form: the node's default; in a VM the node sent, no bridge is `null`). */
export function bridgeWords(bridge: string | null | undefined, fromForm: boolean): string {
  const b = (bridge ?? '').trim();
  if (b === NO_BRIDGE || (!b && !fromForm)) return ' on no bridge (a plain tap)';
  if (!b) return " on the node's default bridge, if it has one";
  return ` on bridge ${b}`;
}

/** Move item `i` of `list` by `by` places (a new array; out-of-range moves change nothing). */
export function moved<T>(list: T[], i: number, by: number): T[] {
  const j = i + by;
  if (i < 0 || i >= list.length || j < 0 || j >= list.length) return list;
  const out = [...list];
  [out[i], out[j]] = [out[j], out[i]];
  return out;
}

function sameNics(a: NicRow[], b: NicRow[]): boolean {
  return a.length === b.length && a.every((n, i) => n.tap === b[i].tap && n.mac.toLowerCase() === b[i].mac.toLowerCase() && n.bridge === b[i].bridge && (n.vlan ?? '') === (b[i].vlan ?? ''));
}

export type NicBody = Record<string, string | number>;

/** The `nics` list the node takes (VM create and edit) from the form's rows, or the first
 *  mistake in words. A card without a MAC, bridge or VLAN leaves that field out (no bridge:
 *  the node's default); bridge "none" is sent as such (a plain tap). */
export function nicsBody(rows: NicRow[]): { nics: NicBody[] } | { error: string } {
  if (rows.length > MAX_NICS) return { error: `A VM has at most ${MAX_NICS} network cards.` };
  const taps = new Set<string>();
  const out: NicBody[] = [];
  for (const [i, n] of rows.entries()) {
    const tap = n.tap.trim();
    if (!TAP_RE.test(tap) || tap === '.' || tap === '..') {
      return { error: `Network card ${i + 1}: the tap device name must be 1-15 letters, digits, ".", "_" or "-".` };
    }
    if (taps.has(tap)) return { error: `Network card ${i + 1}: tap device ${tap} is already used by another card.` };
    taps.add(tap);
    const mac = n.mac.trim();
    if (mac && !MAC_RE.test(mac)) return { error: `Network card ${i + 1}: the MAC address must look like 02:00:00:00:00:01.` };
    if (mac && parseInt(mac.slice(0, 2), 16) & 1) return { error: `Network card ${i + 1}: ${mac} is a multicast address; use a unicast one (first byte even).` };
    const bridge = (n.bridge ?? '').trim();
    const none = bridge === NO_BRIDGE;
    if (!none && bridge.toLowerCase() === NO_BRIDGE) {
      return { error: `Network card ${i + 1}: write "${NO_BRIDGE}" in lower case for no bridge.` };
    }
    if (bridge && (!TAP_RE.test(bridge) || bridge === '.' || bridge === '..')) {
      return { error: `Network card ${i + 1}: the bridge name must be 1-15 letters, digits, ".", "_" or "-".` };
    }
    if (bridge && !none && bridge === tap) return { error: `Network card ${i + 1}: the bridge cannot be the card's own tap device.` };
    const vlanText = (n.vlan ?? '').trim();
    const vlan = Number(vlanText);
    if (vlanText && (!/^[0-9]{1,4}$/.test(vlanText) || vlan < 1 || vlan > 4094)) {
      return { error: `Network card ${i + 1}: the VLAN must be a whole number from 1 to 4094 (0 and 4095 are reserved), or empty for none.` };
    }
    // Left empty, the node's default bridge carries the VLAN (a node without one says so).
    if (vlanText && none) return { error: `Network card ${i + 1}: a VLAN needs a bridge, not "${NO_BRIDGE}" (the VLAN is set on the tap's port of that bridge).` };
    out.push({ tap, ...(mac ? { mac: mac.toLowerCase() } : {}), ...(bridge ? { bridge } : {}), ...(vlanText ? { vlan } : {}) });
  }
  return { nics: out };
}

/** The PATCH /vms/{name} body with only the changed fields, or the first mistake in words. */
export function editBody(vm: VmLike, f: VmEditForm): { body: Record<string, unknown> } | { error: string } {
  const body: Record<string, unknown> = {};
  const name = f.name.trim();
  if (name !== vm.name) {
    if (!NAME_RE.test(name)) return { error: 'The name must be 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit.' };
    body.name = name;
  }
  if (f.description !== (vm.description ?? '')) {
    if (new TextEncoder().encode(f.description).length > 1024) return { error: 'The description is at most 1024 bytes.' };
    body.description = f.description;
  }
  const vcpus = Number(f.vcpus);
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 32) return { error: 'vCPUs must be a whole number from 1 to 32.' };
  if (vcpus !== vm.vcpus) body.vcpus = vcpus;
  const mem = Number(f.memory_mib);
  if (!Number.isInteger(mem) || mem < 16 || mem > 262144) return { error: 'Memory must be a whole number of MiB from 16 to 262144 (256 GiB).' };
  if (mem !== vm.memory_mib) body.memory_mib = mem;
  if (f.cmdline !== vm.cmdline) {
    if (/[\n\0]/.test(f.cmdline) || f.cmdline.length > 2048) return { error: 'The kernel command line is one line of at most 2048 characters.' };
    body.cmdline = f.cmdline;
  }
  if (f.disks.join('\n') !== vm.disks.join('\n')) body.disks = [...f.disks];
  const nics = nicsBody(f.nics);
  if ('error' in nics) return nics;
  const before = formOf(vm).nics;
  const rows = f.nics.map((n) => ({ tap: n.tap.trim(), mac: n.mac.trim(), bridge: (n.bridge ?? '').trim(), vlan: (n.vlan ?? '').trim() }));
  // The node replaces the whole list: every card is sent with its bridge and VLAN, or it would lose them.
  if (!sameNics(rows, before)) body.nics = nics.nics;
  if (Object.keys(body).length === 0) return { error: 'Nothing changed.' };
  return { body };
}

const STOP_WORDS: Record<string, string> = {
  name: 'name',
  vcpus: 'vCPUs',
  memory_mib: 'memory',
  cmdline: 'command line',
  disks: 'disk order',
  nics: 'network cards',
};

/** The changes in `body` that the node accepts only while the VM is stopped, in words. */
export function needsStop(body: Record<string, unknown>): string[] {
  return Object.keys(body).filter((k) => k in STOP_WORDS).map((k) => STOP_WORDS[k]);
}

