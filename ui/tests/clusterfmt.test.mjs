// Unit tests of the cluster view's wording helpers (src/clusterfmt.ts), with node's own test
// runner. The TypeScript source is transpiled in memory with the project's own `typescript`, so
// no extra test framework is needed. Run: npm test (from ui/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadTs } from './load.mjs';

const f = await loadTs('src/clusterfmt.ts');

test('fmtAgo: never, now, and each unit', () => {
  assert.equal(f.fmtAgo(null), 'never');
  assert.equal(f.fmtAgo(undefined), 'never');
  assert.equal(f.fmtAgo(-5), 'never');
  assert.equal(f.fmtAgo(0), 'now');
  assert.equal(f.fmtAgo(999), 'now');
  assert.equal(f.fmtAgo(4500), '4 s ago');
  assert.equal(f.fmtAgo(3 * 60_000 + 59_000), '3 min ago');
  assert.equal(f.fmtAgo(2 * 3_600_000), '2 h ago');
  assert.equal(f.fmtAgo(5 * 86_400_000), '5 d ago');
});

test('fmtSpan rejects nonsense', () => {
  assert.equal(f.fmtSpan(NaN), '–');
  assert.equal(f.fmtSpan(-1), '–');
  assert.equal(f.fmtSpan(59.9), '59 s');
  assert.equal(f.fmtSpan(60), '1 min');
});

test('healthClass', () => {
  assert.equal(f.healthClass('up'), 'ok');
  assert.equal(f.healthClass('active'), 'ok');
  assert.equal(f.healthClass('down'), 'bad');
  assert.equal(f.healthClass('away'), 'bad');
  assert.equal(f.healthClass('failed'), 'bad');
  assert.equal(f.healthClass('unknown'), 'warn');
  assert.equal(f.healthClass('resyncing'), 'warn');
});

test('replicaText for each reachability', () => {
  const r = { disk: 'd', node: 2, state: 'active', reachability: 'up', away_secs: 0, dirty_chunks: 0, resynced_chunks: 0, resyncs: 0 };
  assert.equal(f.replicaText(r), 'up, in sync');
  assert.equal(f.replicaText({ ...r, dirty_chunks: 1 }), 'up, 1 chunk to resync');
  assert.equal(f.replicaText({ ...r, reachability: 'away', away_secs: 190, dirty_chunks: 12 }), 'away for 3 min, 12 chunks to resync');
  assert.equal(f.replicaText({ ...r, reachability: 'resyncing', dirty_chunks: 7 }), 'resyncing, 7 chunks left');
  assert.equal(f.replicaText({ ...r, reachability: '' }), 'unknown');
  assert.equal(f.replicaText({ ...r, reachability: 'partitioned' }), 'partitioned');
});

test('plural', () => {
  assert.equal(f.plural(1, 'snapshot'), '1 snapshot');
  assert.equal(f.plural(0, 'VM'), '0 VMs');
  assert.equal(f.plural(2, 'virtual disk'), '2 virtual disks');
  assert.equal(f.plural(3, 'replica', 'replicas!'), '3 replicas!');
});

test('join command: exact CLI form, quoted only when needed', () => {
  assert.equal(f.joinCommand('127.0.0.1:7443', 'abc.DEF-123'), 'cairn cluster join --address 127.0.0.1:7443 --token abc.DEF-123');
  assert.equal(f.joinCommand('[::1]:7443', "it's"), "cairn cluster join --address '[::1]:7443' --token 'it'\\''s'");
});

test('drainLeft: chunks left while draining, null once removed', () => {
  assert.equal(f.drainLeft(null, 3), null);
  assert.equal(f.drainLeft({ done: true }, 3), null);
  assert.equal(f.drainLeft({ data: { draining: [{ node: 3, chunks_left: 5, hosted_chunks_left: 2 }] } }, 3), 7);
  // The member is no longer draining (another one is): nothing left for it.
  assert.equal(f.drainLeft({ data: { draining: [{ node: 4, chunks_left: 9 }] } }, 3), 0);
});

test('leaseText and leaseClass for every word the status answer uses', () => {
  assert.equal(f.leaseText('held'), 'held');
  assert.equal(f.leaseText('not_needed'), 'not needed');
  assert.equal(f.leaseText('unreachable'), 'unreachable');
  assert.equal(f.leaseText('expired'), 'expired');
  assert.equal(f.leaseText(null), '–');
  assert.equal(f.leaseText('something new'), '–');
  assert.equal(f.leaseClass('held'), 'ok');
  assert.equal(f.leaseClass('not_needed'), 'ok');
  assert.equal(f.leaseClass('unreachable'), 'bad');
  assert.equal(f.leaseClass('expired'), 'bad');
  assert.equal(f.leaseClass(undefined), 'muted');
});

test('drainText with the member answering, before the first chunk moved, and without its answer', () => {
  const row = { node: 3, name: 'c', chunks_left: 4, hosted_chunks_left: 5 };
  assert.equal(
    f.drainText({ ...row, progress: { chunks_left: 9, chunks_at_start: 20, percent: 55, eta_secs: 9 } }),
    'c: 9 of 20 chunks still on its disks (55% moved), about 9 s left',
  );
  assert.equal(
    f.drainText({ ...row, progress: { chunks_left: 1, chunks_at_start: 1, percent: 0, eta_secs: null } }),
    'c: 1 of 1 chunk still on its disks (0% moved), time left not known yet',
  );
  assert.equal(f.drainText({ ...row, progress: null }), 'c: 9 chunks of this node still on its disks; it did not answer, so its whole progress is unknown');
});

test('unreachableNote names the members that do not answer, and what to do', () => {
  const m = (id, name, health) => ({ id, name, health });
  assert.equal(f.unreachableNote([m(1, 'a', 'up'), m(2, 'b', 'up')], 1, true), null);
  assert.equal(f.unreachableNote([m(1, 'a', 'down')], 1, true), null, 'this node itself never counts');
  const n = f.unreachableNote([m(1, 'a', 'up'), m(2, 'b', 'down'), m(3, 'w', 'unknown')], 1, true);
  assert.match(n, /^Not answering at the address shown: b, w\./);
  assert.match(n, /New address button/);
  assert.match(f.unreachableNote([m(1, 'a', 'up'), m(2, 'b', 'down')], 1, false), /an admin tells this node/);
});

test('campaignNote speaks only when this node may not start an election', () => {
  assert.equal(f.campaignNote(true), null);
  assert.equal(f.campaignNote(null), null, 'a node that does not report it');
  assert.equal(f.campaignNote(undefined), null);
  assert.match(f.campaignNote(false), /reaches too few voters to win an election/);
});

test('membersUpText: one member, all up, some not answering', () => {
  assert.equal(f.membersUpText([{ name: 'a', health: 'up' }]), '1 member, up');
  assert.equal(f.membersUpText([{ name: 'a', health: 'unknown' }]), '1 member, unknown');
  const up = (n) => ({ name: n, health: 'up' });
  assert.equal(f.membersUpText([up('a'), up('b'), up('w')]), '3 of 3 members up');
  assert.equal(f.membersUpText([up('a'), { name: 'b', health: 'down' }, up('w')]), '2 of 3 members up (b does not answer)');
  assert.equal(
    f.membersUpText([up('a'), { name: 'b', health: 'down' }, { name: 'w', health: 'unknown' }]),
    '1 of 3 members up (b, w do not answer)',
  );
});

test('clusterCapacity: sums the data members that reported, names the others, skips witnesses', () => {
  const pool = (raw, used) => ({ raw_bytes: raw, used_raw_bytes: used });
  assert.deepEqual(
    f.clusterCapacity([
      { name: 'a', role: 'data', stats: pool(100, 10) },
      { name: 'b', role: 'data', stats: pool(200, 30) },
      { name: 'c', role: 'data', stats: null },
      { name: 'w', role: 'witness' },
    ]),
    { raw: 300, used: 40, nodes: 2, missing: ['c'] },
  );
  assert.deepEqual(f.clusterCapacity([]), { raw: 0, used: 0, nodes: 0, missing: [] });
});

test('elsewhere / elsewhereNote: what the cluster records and a list could not show', () => {
  assert.deepEqual(f.elsewhere(['web', 'db', 'bd'], ['web']), ['bd', 'db']);
  assert.deepEqual(f.elsewhere(null, ['web']), []);
  assert.equal(f.elsewhereNote('VMs', []), null);
  assert.equal(
    f.elsewhereNote('virtual disks', ['bd']),
    'The cluster records 1 virtual disk more (bd) on members that did not answer just now: they are not listed until those members answer.',
  );
  const many = Array.from({ length: 23 }, (_, i) => `v${String(i).padStart(2, '0')}`);
  const note = f.elsewhereNote('VMs', many);
  assert.match(note, /records 23 VMs more \(v00, .*v19, and 3 more\)/);
});

test('nodeWord / spansMembers: where a listed item is', () => {
  assert.equal(f.nodeWord('b'), 'b');
  assert.equal(f.nodeWord(undefined), 'this node');
  assert.equal(f.nodeWord(null), 'this node');
  assert.equal(f.spansMembers([{ name: 'a' }, { name: 'b', node: null }]), false);
  assert.equal(f.spansMembers([{ name: 'a' }, { name: 'b', node: 'b' }]), true);
  assert.equal(f.spansMembers([]), false);
});
