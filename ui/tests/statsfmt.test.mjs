// Unit tests of the live statistics helpers (src/statsfmt.ts): byte and frame wording, the
// window of samples a view keeps, and one VM's network card picked out of the samples.
// Run: npm test (from ui/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadTs } from './load.mjs';

const f = await loadTs('src/statsfmt.ts');

const nic = (id, o = {}) => ({
  id, rx_packets: 0, rx_bytes: 0, tx_packets: 0, tx_bytes: 0, errors: 0,
  rx_packets_per_sec: 0, rx_bytes_per_sec: 0, tx_packets_per_sec: 0, tx_bytes_per_sec: 0, ...o,
});
const sample = (time_ms, vms) => ({ time_ms, cpu_percent: 1, vms });

test('fmtBytes keeps its wording', () => {
  assert.equal(f.fmtBytes(0), '0 B');
  assert.equal(f.fmtBytes(60), '60 B');
  assert.equal(f.fmtBytes(1536), '1.5 KiB');
  assert.equal(f.fmtBytes(20 * 1024 * 1024), '20 MiB');
});

test('rates in words; a dash for what makes no sense', () => {
  assert.equal(f.fmtByteRate(0), '0 B/s');
  assert.equal(f.fmtByteRate(59.98), '60 B/s');
  assert.equal(f.fmtByteRate(1.25 * 1024 * 1024), '1.3 MiB/s');
  for (const bad of [null, undefined, NaN, -1, Infinity]) {
    assert.equal(f.fmtByteRate(bad), '–');
    assert.equal(f.fmtFrameRate(bad), '–');
    assert.equal(f.fmtFrames(bad, 1), '–');
    assert.equal(f.fmtFrames(1, bad), '–');
  }
  assert.equal(f.fmtFrameRate(0), '0 frames/s');
  assert.equal(f.fmtFrameRate(1), '1 frame/s');
  assert.equal(f.fmtFrameRate(0.5), '0.5 frames/s');
  assert.equal(f.fmtFrameRate(0.99), '1 frame/s');
  assert.equal(f.fmtFrameRate(12345.6), '12346 frames/s');
  assert.equal(f.fmtFrames(1, 60), '1 frame (60 B)');
  assert.equal(f.fmtFrames(3, 2048), '3 frames (2.0 KiB)');
  assert.equal(f.fmtAxisBytes(0.5), '0.5 B');
  assert.equal(f.fmtAxisBytes(0), '0 B');
  assert.equal(f.fmtAxisBytes(2048), '2.0 KiB');
});

test('the sample window: history before live samples, no overlap, newest kept', () => {
  const live = [sample(3000), sample(4000)];
  const hist = [sample(1000), sample(2000), sample(3000)];
  assert.deepEqual(f.mergeHistory(live, hist, 10).map((s) => s.time_ms), [1000, 2000, 3000, 4000]);
  assert.deepEqual(f.mergeHistory(live, hist, 3).map((s) => s.time_ms), [2000, 3000, 4000]);
  assert.deepEqual(f.mergeHistory([], hist, 2).map((s) => s.time_ms), [2000, 3000]);
  let w = [];
  for (const t of [1000, 2000, 2000, 1500, 3000, 4000]) w = f.appendSample(w, sample(t), 3);
  assert.deepEqual(w.map((s) => s.time_ms), [2000, 3000, 4000]);
});

test('latestNics: the newest sample that lists the VM', () => {
  const s = [
    sample(1000, [{ name: 'a', nics: [nic('net0', { tx_packets: 1 })] }]),
    sample(2000, [{ name: 'a', nics: [nic('net0', { tx_packets: 2 }), nic('net1')] }, { name: 'b', nics: [] }]),
    sample(3000, [{ name: 'b' }]),
  ];
  assert.deepEqual(f.latestNics(s, 'a').map((n) => [n.id, n.tx_packets]), [['net0', 2], ['net1', 0]]);
  assert.deepEqual(f.latestNics(s, 'b'), []);
  assert.deepEqual(f.latestNics(s, 'nobody'), []);
  assert.deepEqual(f.latestNics([], 'a'), []);
  assert.deepEqual(f.latestNics([{ time_ms: 1 }], 'a'), []);
});

test('nicColumns: rates of one card of one VM, gaps where it is missing', () => {
  const s = [
    sample(1000, []),
    sample(2000, [{ name: 'a', nics: [nic('net0', { rx_bytes_per_sec: 120, tx_bytes_per_sec: 60, rx_packets_per_sec: 2, tx_packets_per_sec: 1 })] }]),
    sample(3000, [{ name: 'b', nics: [nic('net0', { rx_bytes_per_sec: 999 })] }, { name: 'a', nics: [nic('net1', { rx_bytes_per_sec: 7 }), nic('net0')] }]),
    { time_ms: 4000 },
  ];
  assert.deepEqual(f.nicColumns(s, 'a', 'net0'), [
    [1, 2, 3, 4],
    [null, 120, 0, null],
    [null, 60, 0, null],
    [null, 2, 0, null],
    [null, 1, 0, null],
  ]);
  assert.deepEqual(f.nicColumns(s, 'a', 'net1')[1], [null, null, 7, null]);
  assert.deepEqual(f.nicColumns([], 'a', 'net0'), [[], [], [], [], []]);
});

test('nicSummary says the rates now and the errors', () => {
  assert.equal(f.nicSummary('net0', undefined), 'net0: no figures yet');
  assert.equal(
    f.nicSummary('net0', nic('net0', { rx_bytes_per_sec: 1536, rx_packets_per_sec: 1, tx_bytes_per_sec: 0, errors: 1 })),
    'net0 now: receiving 1.5 KiB/s (1 frame/s), sending 0 B/s (0 frames/s), 1 error in total',
  );
  assert.match(f.nicSummary('net1', nic('net1', { errors: 2 })), /, 2 errors in total$/);
});
