// VM calls. The node's REST API may not have VM routes yet, so these go through
// POST /api/v1/control with the control crate's VM requests (same policy, validation and audit
// as every other call). Virtual disk work uses the REST routes.
import { api, Task, waitTask, ApiError } from './api';

export interface VmDevStats {
  id: string;
  read_ops: number;
  read_bytes: number;
  write_ops: number;
  write_bytes: number;
  flush_ops: number;
  errors: number;
  mean_latency_ns: number;
}

export interface VmView {
  name: string;
  description?: string;
  state: 'defined' | 'running' | 'paused' | 'stopped' | string;
  /** A change under way that waits (a disk detach); other changes are refused meanwhile. */
  operation?: string | null;
  vcpus: number;
  memory_mib: number;
  disks: string[];
  nics?: { id: string; tap: string; mac: string; bridge?: string | null; vlan?: number | null }[];
  kernel: string;
  cmdline: string;
  created_unix: number;
  last_exit: string | null;
  stats: { cpu_time_ns: number; vcpu_exits: number; memory_bytes: number; disks: VmDevStats[]; nics: VmDevStats[] } | null;
  /** The cluster member that holds it, when not the node whose web UI this is. */
  node?: string | null;
}

async function ctl<T>(req: Record<string, unknown>): Promise<T> {
  const r = await api<{ kind: string; value?: T }>('POST', '/control', req);
  return r?.value as T;
}

const enc = encodeURIComponent;

// Whether this node has the REST VM routes (/api/v1/vms); learnt from the first list.
let rest: boolean | null = null;

async function listVms(): Promise<VmView[]> {
  if (rest !== false) {
    try {
      const d = await api<{ items: VmView[] }>('GET', '/vms?limit=1000');
      rest = true;
      return d.items ?? [];
    } catch (e) {
      if (!(e instanceof ApiError && (e.status === 404 || e.status === 405)) || rest === true) throw e;
      rest = false;
    }
  }
  return ctl<VmView[]>({ action: 'vm_list' });
}

/** A REST VM action, or the same request through /control on nodes without the routes. */
async function vmCall<T>(method: string, path: string, body: unknown, req: Record<string, unknown>): Promise<T> {
  if (rest === null) await listVms();
  if (!rest) return ctl<T>(req);
  const r = await api<any>(method, path, body);
  await follow(r);
  return r as T;
}

export const vmApi = {
  list: listVms,
  create: (b: { name: string; vcpus: number; memory_mib: number; disks: string[]; kernel: string; cmdline?: string; nics?: Record<string, string | number>[] }) =>
    vmCall<VmView>('POST', '/vms', b, { action: 'vm_create', ...b }),
  start: (name: string) => vmCall<VmView>('POST', `/vms/${enc(name)}/start`, {}, { action: 'vm_start', name }),
  stop: (name: string, force: boolean, timeout_ms?: number) => {
    const b = { force, ...(timeout_ms ? { timeout_ms } : {}) };
    return vmCall<VmView>('POST', `/vms/${enc(name)}/stop`, b, { action: 'vm_stop', name, ...b });
  },
  pause: (name: string) => vmCall<VmView>('POST', `/vms/${enc(name)}/pause`, {}, { action: 'vm_pause', name }),
  resume: (name: string) => vmCall<VmView>('POST', `/vms/${enc(name)}/resume`, {}, { action: 'vm_resume', name }),
  remove: (name: string) => vmCall<void>('DELETE', `/vms/${enc(name)}`, undefined, { action: 'vm_delete', name }),
  /** Move a stopped VM with all its disks to cluster member `to` (a task; returns once it is there). */
  move: (name: string, to: string) => vmCall<VmView>('POST', `/vms/${enc(name)}/move`, { to }, { action: 'vm_move', name, to }),
  /** Change a VM; `body` holds only the changed fields (see vmeditfmt.ts). */
  update: (name: string, body: Record<string, unknown>) => {
    const { name: new_name, ...rest } = body;
    return vmCall<VmView>('PATCH', `/vms/${enc(name)}`, body, { action: 'vm_update', name, ...rest, ...(new_name ? { new_name } : {}) });
  },
};


/** Follow a REST call that may return a task; throw the task's error in words. */
async function follow(r: any, onTask?: (t: Task) => void): Promise<void> {
  if (r && typeof r.id === 'number' && r.state === 'running') {
    const t = await waitTask(r.id, (t) => onTask?.(t));
    if (t.state === 'failed') throw new ApiError(500, t.error?.code ?? 'failed', t.error?.message ?? 'the task failed');
  }
}

export const diskApi = {
  list: () => api<{ items: any[] }>('GET', '/vdisks?limit=1000').then((d) => d.items ?? []),
  snapshots: (d: string) => api<{ items: any[] }>('GET', `/vdisks/${enc(d)}/snapshots?limit=1000`).then((r) => r.items ?? []),
  create: (name: string, size: string) => api('POST', '/vdisks', { name, size }),
  remove: (name: string) => api('DELETE', `/vdisks/${enc(name)}`),
  clone: (source: string, name: string, snapshot: string | null, onTask?: (t: Task) => void) =>
    api('POST', `/vdisks/${enc(source)}/clone`, snapshot ? { name, snapshot } : { name }).then((r) => follow(r, onTask)),
  snapshot: (d: string, name: string) => api('POST', `/vdisks/${enc(d)}/snapshots`, { name }),
  rollback: (d: string, snap: string, onTask?: (t: Task) => void) =>
    api('POST', `/vdisks/${enc(d)}/snapshots/${enc(snap)}/rollback`, {}).then((r) => follow(r, onTask)),
  /** Hand disk `d` over to cluster member `to` (a task; returns once `to` serves it). */
  move: (d: string, to: string) => api('POST', `/vdisks/${enc(d)}/takeover`, { to }).then((r) => follow(r)),
};

/** A step of a multi-step action (create wizard, VM snapshot, VM clone) and its state. */
export interface Step {
  label: string;
  state: 'waiting' | 'running' | 'done' | 'failed' | 'skipped';
  detail?: string;
}
