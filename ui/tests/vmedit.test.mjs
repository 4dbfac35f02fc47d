// Unit tests of the VM edit form's logic (src/vmeditfmt.ts). Run: npm test (from ui/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadTs } from './load.mjs';

const f = await loadTs('src/vmeditfmt.ts');

const vm = {
  name: 'web',
  description: '',
  vcpus: 1,
  memory_mib: 128,
  cmdline: 'console=ttyS0',
  disks: ['root', 'data'],
  nics: [{ id: 'net0', tap: 'tap0', mac: '02:00:00:00:00:01' }],
};

test('an untouched form changes nothing and says so', () => {
  assert.deepEqual(f.editBody(vm, f.formOf(vm)), { error: 'Nothing changed.' });
});

test('only the changed fields are sent', () => {
  const form = { ...f.formOf(vm), vcpus: '2', description: 'front end' };
  assert.deepEqual(f.editBody(vm, form), { body: { vcpus: 2, description: 'front end' } });
  const renamed = { ...f.formOf(vm), name: ' web2 ' };
  assert.deepEqual(f.editBody(vm, renamed), { body: { name: 'web2' } });
});

test('disk order: moving the second disk up makes it the boot disk', () => {
  const form = f.formOf(vm);
  form.disks = f.moved(form.disks, 1, -1);
  assert.deepEqual(form.disks, ['data', 'root']);
  assert.deepEqual(f.editBody(vm, form), { body: { disks: ['data', 'root'] } });
  assert.deepEqual(f.moved(['a', 'b'], 0, -1), ['a', 'b'], 'out of range changes nothing');
  assert.deepEqual(f.moved(['a', 'b'], 1, 1), ['a', 'b']);
});

test('NICs: add, keep MAC case-insensitively, empty MAC left to the node', () => {
  const same = f.formOf(vm);
  same.nics = [{ tap: 'tap0', mac: '02:00:00:00:00:01'.toUpperCase(), bridge: 'none' }];
  assert.deepEqual(f.editBody(vm, same), { error: 'Nothing changed.' });
  const add = f.formOf(vm);
  add.nics = [...add.nics, { tap: 'tap1', mac: '' }];
  assert.deepEqual(f.editBody(vm, add), { body: { nics: [{ tap: 'tap0', mac: '02:00:00:00:00:01', bridge: 'none' }, { tap: 'tap1' }] } });
  const removed = f.formOf(vm);
  removed.nics = [];
  assert.deepEqual(f.editBody(vm, removed), { body: { nics: [] } });
});

test('NICs: a bridge is kept when another field of the list changes, and can be set, emptied or made none', () => {
  const bridged = { ...vm, nics: [{ id: 'net0', tap: 'tap0', mac: '02:00:00:00:00:01', bridge: 'br0' }] };
  assert.deepEqual(f.editBody(bridged, f.formOf(bridged)), { error: 'Nothing changed.' });
  // The node replaces the whole list: a card added next to a bridged one must not lose br0.
  const add = f.formOf(bridged);
  add.nics = [...add.nics, { tap: 'tap1', mac: '', bridge: '' }];
  assert.deepEqual(f.editBody(bridged, add), { body: { nics: [{ tap: 'tap0', mac: '02:00:00:00:00:01', bridge: 'br0' }, { tap: 'tap1' }] } });
  // Emptied: the node's default bridge (if it has one); none: no bridge at all.
  const cleared = f.formOf(bridged);
  cleared.nics[0].bridge = ' ';
  assert.deepEqual(f.editBody(bridged, cleared), { body: { nics: [{ tap: 'tap0', mac: '02:00:00:00:00:01' }] } });
  const none = f.formOf(bridged);
  none.nics[0].bridge = 'none';
  assert.deepEqual(f.editBody(bridged, none), { body: { nics: [{ tap: 'tap0', mac: '02:00:00:00:00:01', bridge: 'none' }] } });
  const set = f.formOf(vm);
  set.nics[0].bridge = 'br1';
  assert.deepEqual(f.editBody(vm, set), { body: { nics: [{ tap: 'tap0', mac: '02:00:00:00:00:01', bridge: 'br1' }] } });
  const own = f.formOf(vm);
  own.nics[0].bridge = 'tap0';
  assert.match(f.editBody(vm, own).error, /cannot be the card's own tap/);
  const bad = f.formOf(vm);
  bad.nics[0].bridge = 'br 0';
  assert.match(f.editBody(vm, bad).error, /bridge name must be/);
});

test('NICs: a VLAN is sent as a number with its bridge, kept, changed or cleared, and checked', () => {
  const tagged = { ...vm, nics: [{ id: 'net0', tap: 'tap0', mac: '02:00:00:00:00:01', bridge: 'br0', vlan: 10 }] };
  assert.equal(f.formOf(tagged).nics[0].vlan, '10');
  assert.deepEqual(f.editBody(tagged, f.formOf(tagged)), { error: 'Nothing changed.' });
  // A card added next to a tagged one keeps its VLAN (the node replaces the whole list).
  const add = f.formOf(tagged);
  add.nics = [...add.nics, { tap: 'tap1', mac: '', bridge: '', vlan: '' }];
  assert.deepEqual(f.editBody(tagged, add), {
    body: { nics: [{ tap: 'tap0', mac: '02:00:00:00:00:01', bridge: 'br0', vlan: 10 }, { tap: 'tap1' }] },
  });
  const moved = f.formOf(tagged);
  moved.nics[0].vlan = ' 20 ';
  assert.deepEqual(f.editBody(tagged, moved), { body: { nics: [{ tap: 'tap0', mac: '02:00:00:00:00:01', bridge: 'br0', vlan: 20 }] } });
  const cleared = f.formOf(tagged);
  cleared.nics[0].vlan = '';
  assert.deepEqual(f.editBody(tagged, cleared), { body: { nics: [{ tap: 'tap0', mac: '02:00:00:00:00:01', bridge: 'br0' }] } });
  for (const v of ['0', '4095', '10.5', 'ten', '-1', '00000']) {
    const bad = f.formOf(tagged);
    bad.nics[0].vlan = v;
    assert.match(f.editBody(tagged, bad).error, /Network card 1: the VLAN must be a whole number from 1 to 4094/, v);
  }
  assert.deepEqual(f.nicsBody([{ tap: 't0', mac: '', bridge: 'br0', vlan: '4094' }]), { nics: [{ tap: 't0', bridge: 'br0', vlan: 4094 }] });
  assert.match(f.nicsBody([{ tap: 't0', mac: '', bridge: 'none', vlan: '10' }]).error, /Network card 1: a VLAN needs a bridge, not "none"/);
  // Without a bridge of its own the node's default carries it (a node without one says so).
  assert.deepEqual(f.nicsBody([{ tap: 't0', mac: '', bridge: ' ', vlan: '10' }]), { nics: [{ tap: 't0', vlan: 10 }] });
});

test('NICs: a card without a bridge is shown as none and sent back so, not onto the default bridge', () => {
  // vm's card has no bridge (a plain tap): a node with a default bridge would put a card sent
  // without one on it, so the form starts at "none" and an edit elsewhere in the list keeps it.
  assert.equal(f.formOf(vm).nics[0].bridge, 'none');
  assert.deepEqual(f.editBody(vm, f.formOf(vm)), { error: 'Nothing changed.' });
  const other = f.formOf(vm);
  other.nics[0].mac = '02:00:00:00:00:02';
  assert.deepEqual(f.editBody(vm, other), { body: { nics: [{ tap: 'tap0', mac: '02:00:00:00:00:02', bridge: 'none' }] } });
  // A tap may be called none: "none" is not a bridge name, so it is not the card's own tap.
  assert.deepEqual(f.nicsBody([{ tap: 'none', mac: '', bridge: 'none' }]), { nics: [{ tap: 'none', bridge: 'none' }] });
  for (const typo of ['None', ' NONE ']) {
    assert.match(f.nicsBody([{ tap: 't0', mac: '', bridge: typo }]).error, /Network card 1: write "none" in lower case for no bridge/, typo);
  }
  assert.equal(f.bridgeWords('none', true), ' on no bridge (a plain tap)');
  assert.equal(f.bridgeWords('', true), " on the node's default bridge, if it has one");
  assert.equal(f.bridgeWords(null, false), ' on no bridge (a plain tap)');
  assert.equal(f.bridgeWords('br0', false), ' on bridge br0');
});

test('nicsBody: the create wizard gets the same checks and leaves empty fields out', () => {
  assert.deepEqual(f.nicsBody([]), { nics: [] });
  assert.deepEqual(f.nicsBody([{ tap: ' t0 ', mac: '02:AA:00:00:00:01', bridge: ' br0 ' }, { tap: 't1', mac: '', bridge: '' }]), {
    nics: [{ tap: 't0', mac: '02:aa:00:00:00:01', bridge: 'br0' }, { tap: 't1' }],
  });
  assert.match(f.nicsBody([{ tap: 't0', mac: '', bridge: '' }, { tap: 't0', mac: '', bridge: '' }]).error, /already used/);
  assert.match(f.nicsBody([{ tap: '', mac: '', bridge: '' }]).error, /tap device name/);
  assert.match(f.nicsBody(Array.from({ length: 9 }, (_, i) => ({ tap: `t${i}`, mac: '', bridge: '' }))).error, /at most 8/);
});

test('mistakes are explained before asking the node', () => {
  const bad = (patch, re) => {
    const r = f.editBody(vm, { ...f.formOf(vm), ...patch });
    assert.ok('error' in r && re.test(r.error), `${JSON.stringify(patch)} -> ${JSON.stringify(r)}`);
  };
  bad({ vcpus: '0' }, /vCPUs must be/);
  bad({ vcpus: '1.5' }, /vCPUs must be/);
  bad({ vcpus: '33' }, /vCPUs must be/);
  bad({ memory_mib: '8' }, /Memory must be/);
  bad({ name: '-x' }, /The name must be/);
  bad({ cmdline: 'a\nb' }, /one line/);
  bad({ description: 'x'.repeat(1025) }, /at most 1024 bytes/);
  bad({ nics: [{ tap: '', mac: '' }] }, /Network card 1: the tap device name/);
  bad({ nics: [{ tap: 'a-very-long-tap-name', mac: '' }] }, /tap device name/);
  bad({ nics: [{ tap: 't0', mac: '' }, { tap: 't0', mac: '' }] }, /Network card 2: tap device t0 is already used/);
  bad({ nics: [{ tap: 't0', mac: '02:00:00:00:00' }] }, /must look like/);
  bad({ nics: [{ tap: 't0', mac: '01:00:00:00:00:01' }] }, /multicast/);
  bad({ nics: Array.from({ length: 9 }, (_, i) => ({ tap: `t${i}`, mac: '' })) }, /at most 8 network cards/);
});

test('needsStop names what only a stopped VM may change', () => {
  assert.deepEqual(f.needsStop({ description: 'x' }), []);
  assert.deepEqual(f.needsStop({ vcpus: 2, disks: [], description: 'x', nics: [] }), ['vCPUs', 'disk order', 'network cards']);
});
