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
  state: 'defined' | 'running' | 'paused' | 'stopped' | string;
  vcpus: number;
  memory_mib: number;
  disks: string[];
  kernel: string;
  cmdline: string;
  created_unix: number;
  last_exit: string | null;
  stats: { cpu_time_ns: number; vcpu_exits: number; memory_bytes: number; disks: VmDevStats[]; nics: VmDevStats[] } | null;
}

async function ctl<T>(req: Record<string, unknown>): Promise<T> {
  const r = await api<{ kind: string; value?: T }>('POST', '/control', req);
  return r?.value as T;
}

export const vmApi = {
  list: () => ctl<VmView[]>({ action: 'vm_list' }),
  get: (name: string) => ctl<VmView>({ action: 'vm_get', name }),
  create: (b: { name: string; vcpus: number; memory_mib: number; disks: string[]; kernel: string; cmdline?: string }) =>
    ctl<VmView>({ action: 'vm_create', ...b }),
  start: (name: string) => ctl<VmView>({ action: 'vm_start', name }),
  stop: (name: string, force: boolean, timeout_ms?: number) =>
    ctl<VmView>({ action: 'vm_stop', name, force, ...(timeout_ms ? { timeout_ms } : {}) }),
  pause: (name: string) => ctl<VmView>({ action: 'vm_pause', name }),
  resume: (name: string) => ctl<VmView>({ action: 'vm_resume', name }),
  remove: (name: string) => ctl<void>({ action: 'vm_delete', name }),
};

const enc = encodeURIComponent;

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
};

/** A step of a multi-step action (create wizard, VM snapshot, VM clone) and its state. */
export interface Step {
  label: string;
  state: 'waiting' | 'running' | 'done' | 'failed' | 'skipped';
  detail?: string;
}
