// Unit tests of the system log view's logic (src/syslogfmt.ts): pages merged into the kept
// window, a line's local time, the filter and the "skipped" wording. Run: npm test (from ui/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadTs } from './load.mjs';

const f = await loadTs('src/syslogfmt.ts');

const line = (seq, text = `line ${seq}`) => ({ seq, unix_ms: 1_000 + seq, text });
const page = (seqs, skipped = 0, last = seqs.length ? seqs[seqs.length - 1] : undefined) =>
  ({ lines: seqs.map((s) => line(s)), last_seq: last, skipped });
const seqs = (st) => st.lines.map((l) => l.seq);

test('pages follow one another; the cursor is the last line read', () => {
  let st = f.mergeLogPage(f.EMPTY_LOG, page([1, 2, 3]), 10);
  assert.deepEqual(seqs(st), [1, 2, 3]);
  assert.equal(st.after, 3);
  assert.equal(st.skipped, 0);
  st = f.mergeLogPage(st, page([4, 5]), 10);
  assert.deepEqual(seqs(st), [1, 2, 3, 4, 5]);
  assert.equal(st.after, 5);
  // Nothing new: the node answers with the same cursor, and the view keeps the same state.
  assert.equal(f.mergeLogPage(st, page([], 0, 5), 10), st);
  // The page given to the first state was not changed by merging.
  assert.deepEqual(seqs(f.EMPTY_LOG), []);
});

test('a line read twice is kept once; only the newest `keep` stay', () => {
  let st = f.mergeLogPage(f.EMPTY_LOG, page([1, 2, 3]), 4);
  st = f.mergeLogPage(st, page([2, 3, 4, 5, 6]), 4);
  assert.deepEqual(seqs(st), [3, 4, 5, 6]);
  assert.equal(st.after, 6);
  // Dropped from the window is not "skipped": those lines were shown.
  assert.equal(st.skipped, 0);
});

test('skipped lines add up across pages', () => {
  // The first page: the node had 1,234 older lines than the limit allowed.
  let st = f.mergeLogPage(f.EMPTY_LOG, page([1235, 1236], 1234), 10);
  assert.equal(st.skipped, 1234);
  // Lines written faster than the view read them.
  st = f.mergeLogPage(st, page([1240], 3), 10);
  assert.deepEqual(seqs(st), [1235, 1236, 1240]);
  assert.equal(st.skipped, 1237);
  // Nonsense from the wire counts as nothing.
  st = f.mergeLogPage(st, { lines: [], last_seq: 1240, skipped: -4 }, 10);
  assert.equal(st.skipped, 1237);
});

test('a cursor never moves back (an answer with an older last_seq)', () => {
  const st = f.mergeLogPage(f.EMPTY_LOG, page([7, 8]), 10);
  const same = f.mergeLogPage(st, page([], 0, 2), 10);
  assert.equal(same.after, 8);
  assert.equal(same, st);
});

test('a line\'s time is local, to the millisecond', () => {
  const ms = new Date(2026, 10, 26, 23, 5, 7, 9).getTime();
  assert.equal(f.fmtLogTime(ms), '2026-11-26 23:05:07.009');
  const ms2 = new Date(2027, 0, 2, 3, 4, 5, 678).getTime();
  assert.equal(f.fmtLogTime(ms2), '2027-01-02 03:04:05.678');
  for (const bad of [NaN, -1, Infinity]) assert.equal(f.fmtLogTime(bad), '');
});

test('the filter keeps lines holding the words, in any case', () => {
  const lines = [line(1, 'cairn node ui-test running'), line(2, 'CLI: cairn --data /x'), line(3, 'INFO api: Running')];
  assert.deepEqual(f.filterLog(lines, '').map((l) => l.seq), [1, 2, 3]);
  assert.deepEqual(f.filterLog(lines, '   ').map((l) => l.seq), [1, 2, 3]);
  assert.deepEqual(f.filterLog(lines, 'running').map((l) => l.seq), [1, 3]);
  assert.deepEqual(f.filterLog(lines, ' CLI: ').map((l) => l.seq), [2]);
  assert.deepEqual(f.filterLog(lines, 'no such words').map((l) => l.seq), []);
});

test('skipped in words, nothing when none', () => {
  assert.equal(f.fmtSkipped(0), '');
  assert.equal(f.fmtSkipped(-3), '');
  assert.equal(f.fmtSkipped(NaN), '');
  assert.equal(f.fmtSkipped(1), 'skipped 1 line');
  assert.equal(f.fmtSkipped(2), 'skipped 2 lines');
  assert.equal(f.fmtSkipped(1234), 'skipped 1,234 lines');
});

test('a page from a restarted node starts the view over from the first line', () => {
  const booted = (seqs, id) => ({ ...page(seqs), boot_id: id });
  let st = f.mergeLogPage(f.EMPTY_LOG, booted([1, 2, 3], 'a'), 10);
  assert.equal(st.boot, 'a');
  st = f.mergeLogPage(st, booted([4], 'a'), 10);
  assert.deepEqual(seqs(st), [1, 2, 3, 4]);
  // The node restarted: asked for after=4, it gives its new line 5 (lines 1-4 of the new run
  // would be lost). The view forgets the old run and asks again from 0.
  st = f.mergeLogPage(st, booted([5], 'b'), 10);
  assert.deepEqual(seqs(st), []);
  assert.equal(st.after, 0);
  assert.equal(st.boot, 'b');
  st = f.mergeLogPage(st, booted([1, 2, 3, 4, 5], 'b'), 10);
  assert.deepEqual(seqs(st), [1, 2, 3, 4, 5]);
  assert.equal(st.after, 5);
  // A page without a boot id (an older node) keeps the one known.
  st = f.mergeLogPage(st, page([6]), 10);
  assert.equal(st.boot, 'b');
  assert.deepEqual(seqs(st), [1, 2, 3, 4, 5, 6]);
});

test('older pages go in front, until the node keeps nothing older', () => {
  const withOlder = (seqs, older, skipped = 0) => ({ ...page(seqs, skipped), older });
  // The first page: the newest lines, 7 older ones skipped of which the node still keeps 5.
  let st = f.mergeLogPage(f.EMPTY_LOG, withOlder([8, 9, 10], 5, 7), 10);
  assert.equal(st.older, 5);
  assert.equal(st.skipped, 7);
  // Following does not change what is older than the first line.
  st = f.mergeLogPage(st, withOlder([11], 10), 10);
  assert.equal(st.older, 5);
  // before=8: lines 5-7 (the newest before it), 2 older still; they were among the skipped.
  st = f.mergeOlderPage(st, withOlder([5, 6, 7], 2), 10);
  assert.deepEqual(seqs(st), [5, 6, 7, 8, 9, 10, 11]);
  assert.equal(st.older, 2);
  assert.equal(st.skipped, 4);
  assert.equal(st.after, 11);
  // A line already kept is not kept twice; the count never goes below 0.
  st = f.mergeOlderPage(st, withOlder([3, 4, 5], 0), 10);
  assert.deepEqual(seqs(st), [3, 4, 5, 6, 7, 8, 9, 10, 11]);
  assert.equal(st.older, 0);
  assert.equal(st.skipped, 2);
  st = f.mergeOlderPage({ ...st, skipped: 1 }, withOlder([1, 2], 0), 10);
  assert.equal(st.skipped, 0);
  // Over the window, the newest stay; nothing older than them is offered.
  st = f.mergeOlderPage(f.mergeLogPage(f.EMPTY_LOG, withOlder([5, 6, 7], 4), 4), withOlder([2, 3, 4], 1), 4);
  assert.deepEqual(seqs(st), [4, 5, 6, 7]);
  assert.equal(st.older, 0);
  // Nonsense from the wire counts as nothing.
  st = f.mergeLogPage(f.EMPTY_LOG, withOlder([5], -2), 4);
  assert.equal(st.older, 0);
});

test('an older page from another run of the node is left out', () => {
  const booted = (seqs, id, older) => ({ ...page(seqs), boot_id: id, older });
  const st = f.mergeLogPage(f.EMPTY_LOG, booted([5, 6], 'a', 4), 10);
  assert.equal(f.mergeOlderPage(st, booted([1, 2], 'b', 0), 10), st);
  assert.deepEqual(seqs(f.mergeOlderPage(st, booted([3, 4], 'a', 2), 10)), [3, 4, 5, 6]);
});
