// A VM's network cards, live: per card the receive and transmit rates (bytes/s and frames/s)
// as charts, and a table with the rates now, the totals since the VM started and the errors
// (four columns, so that it fits a phone).
// Figures come from the node's live statistics (one sample a second); a card of a VM that has
// not run since the node started has none, and says so.
import { Chart } from '../chart';
import { useLiveSamples } from '../live';
import { fmtAxisBytes, fmtByteRate, fmtFrameRate, fmtFrames, latestNics, LiveSample, nicColumns, nicSummary } from '../statsfmt';
import { html } from '../ui';
import { VmView } from '../vmapi';

const KEEP = 300; // five minutes on screen
const RX = '#2563eb';
const TX = '#ea580c';

export function VmNics({ vm }: { vm: VmView }) {
  // Only a VM with cards (defined, or still on the running machine after an edit) subscribes.
  if (!vm.nics?.length && !vm.stats?.nics?.length) return html`<p class="muted">${vm.name} has no network cards.</p>`;
  return html`<${NicFigures} vm=${vm} />`;
}

function NicFigures({ vm }: { vm: VmView }) {
  const { samples, live } = useLiveSamples<LiveSample>(KEEP);
  const defined = vm.nics ?? [];
  const now = latestNics(samples, vm.name);
  // The cards as defined, plus any the running machine still has after an edit.
  const ids = defined.map((n) => n.id).concat(now.map((n) => n.id).filter((id) => !defined.some((d) => d.id === id)));
  const key = (id: string) => `net-${vm.name}-${id}`.replace(/[^A-Za-z0-9_-]/g, '_');
  return html`<section class="vm-net" aria-labelledby=${key('h')}>
    <h3 id=${key('h')}>Network <small class="muted">${live ? 'live' : 'connecting…'}</small></h3>
    ${now.length === 0 ? html`<p class="muted">No figures yet: ${vm.name} has not run since the node started.</p>` : null}
    <div class="table-wrap"><table class="nic-table" aria-label=${`network cards of ${vm.name}`}>
      <thead><tr><th scope="col">Card</th><th scope="col">Receive</th><th scope="col">Transmit</th><th scope="col">Errors</th></tr></thead>
      <tbody>${ids.map((id) => {
        const n = now.find((x) => x.id === id);
        const d = defined.find((x) => x.id === id);
        return html`<tr data-nic=${id}>
          <th scope="row">${id}${d ? html`<br /><small class="muted mono">${d.tap}</small>` : null}</th>
          <td><span data-col="rx-rate">${n ? fmtByteRate(n.rx_bytes_per_sec) : '–'}</span>
            <small data-col="rx-frame-rate">${n ? fmtFrameRate(n.rx_packets_per_sec) : ''}</small>
            <small data-col="rx-total">${n ? `${fmtFrames(n.rx_packets, n.rx_bytes)} in total` : ''}</small></td>
          <td><span data-col="tx-rate">${n ? fmtByteRate(n.tx_bytes_per_sec) : '–'}</span>
            <small data-col="tx-frame-rate">${n ? fmtFrameRate(n.tx_packets_per_sec) : ''}</small>
            <small data-col="tx-total">${n ? `${fmtFrames(n.tx_packets, n.tx_bytes)} in total` : ''}</small></td>
          <td data-col="errors">${n ? n.errors : '–'}</td>
        </tr>`;
      })}</tbody>
    </table></div>
    ${now.length ? html`<div class="charts">${ids.filter((id) => now.some((n) => n.id === id)).map((id) => {
      const c = nicColumns(samples, vm.name, id);
      const words = nicSummary(id, now.find((x) => x.id === id));
      const series = [{ label: 'receive', color: RX }, { label: 'transmit', color: TX }];
      return html`<${Chart} key=${key(id) + '-b'} id=${key(id) + '-bytes'} title=${`${id}: bytes per second`} unit="B"
          fmt=${fmtAxisBytes} series=${series} data=${[c[0], c[1], c[2]]} summary=${`${id} bytes per second chart. ${words}`} />
        <${Chart} key=${key(id) + '-f'} id=${key(id) + '-frames'} title=${`${id}: frames per second`} unit=""
          series=${series} data=${[c[0], c[3], c[4]]} summary=${`${id} frames per second chart. ${words}`} />`;
    })}</div>` : null}
  </section>`;
}
