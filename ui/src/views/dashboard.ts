import { fmtBytes } from '../api';
import { Chart } from '../chart';
import { useLiveSamples } from '../live';
import { clusterCapacity, membersUpText, plural } from '../clusterfmt';
import { html, ErrorBox, useLoad } from '../ui';

interface Sample {
  time_ms: number;
  cpu_percent: number;
  mem_used_bytes: number;
  mem_total_bytes: number;
  read_iops: number;
  write_iops: number;
  pool_used_bytes: number;
  pool_raw_bytes: number;
  cluster?: { data_nodes: number; reporting: number; read_iops: number; write_iops: number; read_bytes_per_sec: number; write_bytes_per_sec: number } | null;
}

const KEEP = 600; // ten minutes on screen

function columns(s: Sample[]): number[][] {
  return [
    s.map((x) => x.time_ms / 1000),
    s.map((x) => x.cpu_percent),
    s.map((x) => (x.mem_total_bytes ? (100 * x.mem_used_bytes) / x.mem_total_bytes : 0)),
    s.map((x) => x.read_iops),
    s.map((x) => x.write_iops),
  ];
}

export function Dashboard() {
  const { samples, live } = useLiveSamples<Sample>(KEEP);
  const alerts = useLoad<any>('/alerts', 5000);
  const pool = useLoad<any>('/pool', 5000);
  const cluster = useLoad<any>('/cluster', 5000);
  const cols = columns(samples);
  const last = samples[samples.length - 1];
  const p = pool.data;
  const whole = cluster.data ? clusterCapacity(cluster.data.members) : null;
  // More than one data node: the cluster's disks are every data node's own, summed.
  const many = whole != null && whole.nodes + whole.missing.length > 1;
  const pct = (used: number, raw: number) => (raw ? Math.round((100 * used) / raw) : 0);
  const usedPct = p ? pct(p.used_raw_bytes, p.raw_bytes) : 0;
  const items: any[] = alerts.data?.items ?? [];
  return html`<section aria-labelledby="dash-h">
    <h2 id="dash-h">Dashboard</h2>
    <div class="cards">
      <div class="card">
        <h3>Health</h3>
        ${items.length === 0
          ? html`<p class="ok">All good: no alerts.</p>`
          : html`<ul class="alerts">${items.map((a) => html`<li class=${a.severity}>${a.message}</li>`)}</ul>`}
        <p>${cluster.data ? membersUpText(cluster.data.members) : ''}</p>
      </div>
      <div class="card">
        <h3>Capacity</h3>
        ${p && many && whole
          ? html`<p data-cluster-capacity>Whole cluster: ${fmtBytes(whole.used)} of ${fmtBytes(whole.raw)} raw used (${pct(whole.used, whole.raw)}%) on ${plural(whole.nodes, 'data node')}${whole.missing.length ? ` (${whole.missing.join(', ')} did not report)` : ''}</p>
              <progress max="100" value=${pct(whole.used, whole.raw)} aria-label="cluster disks used">${pct(whole.used, whole.raw)}%</progress>
              <p>This node's virtual disks take ${fmtBytes(p.used_raw_bytes)} with both copies; its pool: ${fmtBytes(p.usable_bytes)} usable with two copies, ${p.disks} disks${p.rebalancing ? ', rebalancing' : ''}</p>`
          : p
          ? html`<p>${fmtBytes(p.used_raw_bytes)} of ${fmtBytes(p.raw_bytes)} raw used (${usedPct}%)</p>
              <progress max="100" value=${usedPct} aria-label="pool used">${usedPct}%</progress>
              <p>${fmtBytes(p.usable_bytes)} usable with two copies, ${p.disks} disks${p.rebalancing ? ', rebalancing' : ''}</p>`
          : html`<p>Loading…</p>`}
        <${ErrorBox} error=${pool.error} />
      </div>
      <div class="card">
        <h3>Now</h3>
        ${last
          ? html`<p>CPU ${last.cpu_percent.toFixed(0)}% · RAM ${fmtBytes(last.mem_used_bytes)} of ${fmtBytes(last.mem_total_bytes)}</p>
              <p>${last.cluster && last.cluster.data_nodes > 1 ? 'This node: ' : ''}${(last.read_iops + last.write_iops).toFixed(0)} IOPS</p>
              ${last.cluster && last.cluster.data_nodes > 1
                ? html`<p data-cluster-io>Whole cluster: ${(last.cluster.read_iops + last.cluster.write_iops).toFixed(0)} IOPS, ${fmtBytes(last.cluster.read_bytes_per_sec + last.cluster.write_bytes_per_sec)}/s (${last.cluster.reporting} of ${last.cluster.data_nodes} data nodes reporting, every 5 s)</p>`
                : null}`
          : html`<p>Waiting for statistics…</p>`}
        <p class="muted" id="live-state">${live ? 'Live' : 'Connecting…'}</p>
      </div>
    </div>
    <div class="charts">
      <${Chart} id="chart-cpu" title="CPU" unit="%" series=${[{ label: 'CPU %', color: '#2563eb' }]} data=${[cols[0], cols[1]]} />
      <${Chart} id="chart-ram" title="Memory" unit="%" series=${[{ label: 'RAM %', color: '#16a34a' }]} data=${[cols[0], cols[2]]} />
      <${Chart} id="chart-iops" title="Disk IOPS" unit="" series=${[{ label: 'read', color: '#9333ea' }, { label: 'write', color: '#ea580c' }]} data=${[cols[0], cols[3], cols[4]]} />
    </div>
  </section>`;
}
