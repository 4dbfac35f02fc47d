// Browser test of the web UI in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core): log in, create a disk, snapshot it, clone the snapshot, watch a live chart
// move, visit every view (screenshots at laptop and phone widths), check labels, log out.
// Usage: node ui/tests/browser.mjs URL USER PASSWORD ARTIFACT_DIR
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, user, password, outDir] = process.argv.slice(2);
if (!url || !user || !password || !outDir) {
  console.error('usage: browser.mjs URL USER PASSWORD ARTIFACT_DIR');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'cairn-chromium-'));
const results = [];
const step = async (name, f) => {
  const t0 = Date.now();
  try {
    await f();
    results.push([name, true]);
    console.log(`ok - ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push([name, false]);
    console.log(`not ok - ${name}: ${e && e.message ? e.message.split('\n')[0] : e}`);
    throw e;
  }
};

const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1280, height: 860 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
const page = ctx.pages()[0] ?? (await ctx.newPage());
page.setDefaultTimeout(20000);
const consoleErrors = [];
page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
const answers = [];
page.on('dialog', async (d) => {
  if (d.type() === 'prompt') await d.accept(answers.shift() ?? d.defaultValue());
  else await d.accept();
});
const shot = (name) => page.screenshot({ path: join(outDir, `${name}.png`), fullPage: true });
const go = async (view) => {
  await page.click(`nav a[href="#/${view}"]`);
  await page.waitForFunction((v) => location.hash === `#/${v}`, view);
};

try {
  await step('login page loads over HTTPS', async () => {
    await page.goto(url);
    await page.getByLabel('User name').waitFor();
    await shot('01-login');
  });
  await step('wrong password is explained', async () => {
    await page.getByLabel('User name').fill(user);
    await page.getByLabel('Password').fill('not-the-password');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByText('Wrong user name or password').waitFor();
  });
  await step('log in', async () => {
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  });
  await step('live chart moves', async () => {
    const points = () => page.locator('#chart-cpu').getAttribute('data-points').then(Number);
    await page.waitForFunction(() => Number(document.querySelector('#chart-cpu')?.getAttribute('data-points')) >= 2);
    const before = await points();
    await page.waitForFunction((b) => Number(document.querySelector('#chart-cpu')?.getAttribute('data-points')) >= b + 2, before, { timeout: 15000 });
    await page.getByText('Live', { exact: true }).waitFor();
    await shot('02-dashboard');
  });
  await step('create a virtual disk', async () => {
    await go('vdisks');
    await page.getByLabel('Name', { exact: true }).fill('web1');
    await page.getByLabel('Size').fill('64M');
    await page.getByRole('button', { name: 'Create disk' }).click();
    await page.locator('tr[data-vdisk="web1"]').waitFor();
  });
  await step('take a snapshot', async () => {
    answers.push('s1');
    await page.locator('tr[data-vdisk="web1"]').getByRole('button', { name: 'Snapshot', exact: true }).click();
    await page.getByText('Snapshot web1: done.').waitFor();
    await page.getByRole('list', { name: 'snapshots of web1' }).getByText('s1').waitFor();
  });
  await step('clone the snapshot (a task, with progress)', async () => {
    answers.push('web1-clone');
    await page.getByRole('list', { name: 'snapshots of web1' }).getByRole('button', { name: 'Clone' }).click();
    await page.getByText('Clone web1@s1: done.').waitFor();
    await page.locator('tr[data-vdisk="web1-clone"]').waitFor();
    await shot('03-vdisks');
  });
  await step('an API error is shown in words', async () => {
    await page.getByLabel('Name', { exact: true }).fill('web1');
    await page.getByLabel('Size').fill('64M');
    await page.getByRole('button', { name: 'Create disk' }).click();
    await page.getByRole('alert').filter({ hasText: 'Create web1 failed. Conflict:' }).waitFor();
  });
  await step('every view renders', async () => {
    await go('disks');
    await page.getByRole('heading', { name: 'Nodes and disks' }).waitFor();
    await page.getByRole('cell', { name: 'disk0' }).first().waitFor();
    await shot('04-disks');
    await go('vms');
    await page.getByText('No VMs yet.').waitFor();
    await shot('05-vms');
    await go('tasks');
    await page.getByRole('cell', { name: 'vdisk_clone' }).first().waitFor();
    await shot('06-tasks');
    await go('users');
    await page.getByRole('cell', { name: 'admin' }).first().waitFor();
    await shot('07-users');
    await go('settings');
    await page.getByText('SHA-256').waitFor();
    await shot('08-settings');
  });
  await step('every control has a label', async () => {
    for (const view of ['vdisks', 'users', 'settings', 'disks']) {
      await go(view);
      await page.waitForTimeout(300);
      const unlabelled = await page.evaluate(() =>
        [...document.querySelectorAll('input, select, textarea')]
          .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
          .map((el) => el.id || el.outerHTML.slice(0, 60)));
      if (unlabelled.length) throw new Error(`${view}: unlabelled ${unlabelled.join(', ')}`);
    }
  });
  await step('keyboard: tab reaches the navigation', async () => {
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    const tag = await page.evaluate(() => document.activeElement?.tagName);
    if (!['A', 'BUTTON'].includes(tag)) throw new Error(`focus on ${tag}`);
  });
  await step('phone width', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.getByRole('button', { name: 'Menu' }).click();
    await go('dashboard');
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 2) throw new Error(`page is ${overflow}px wider than the phone screen`);
    await shot('09-phone-dashboard');
    await page.setViewportSize({ width: 1280, height: 860 });
  });
  await step('log out', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByLabel('User name').waitFor();
    const r = await page.evaluate(() => fetch('/api/v1/vdisks').then((r) => r.status));
    if (r !== 401) throw new Error(`after logout the API answered ${r}`);
    await shot('10-logged-out');
  });
  const bad = consoleErrors.filter((e) => !/401|409|Failed to load resource/.test(e));
  if (bad.length) console.log(`note: console errors: ${bad.join(' | ')}`);
} catch {
  failed = true;
  await shot('zz-failure').catch(() => {});
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
const passed = results.filter((r) => r[1]).length;
console.log(`${passed} passed, ${results.length - passed} failed`);
process.exit(failed ? 1 : 0);
