// End-to-end test of the dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core). Started by crates/tenement-cli/tests/dashboard.rs, which runs a real
// `ten serve` with fixture instances and passes: URL, ADMIN_TOKEN, TENANT_TOKEN (tenant
// "alice"), SHOTS (screenshot directory). Exits non-zero on the first failed expectation.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import http from 'node:http';

/** GET through the front door with a chosen Host header (to reach an instance). */
function hostGet(host, path) {
  const u = new globalThis.URL(process.env.URL);
  return new Promise((resolve, reject) => {
    http.get({ host: u.hostname, port: u.port, path, headers: { Host: host } }, (res) => { res.resume(); res.on('end', resolve); }).on('error', reject);
  });
}

const { URL: base, ADMIN_TOKEN, TENANT_TOKEN, SHOTS = 'target/dashboard-screenshots' } = process.env;
mkdirSync(SHOTS, { recursive: true });

function expect(cond, what) {
  if (!cond) throw new Error(`expected: ${what}`);
  console.log(`ok - ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const external = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('request', (r) => { if (!r.url().startsWith(base)) external.push(r.url()); });
  const rowOf = (key) => page.locator(`tr[data-instance="${key}"]`);

  // Index is not cached; hashed assets are.
  const res = await page.goto(base + '/');
  expect(/no-cache/.test(res.headers()['cache-control'] ?? '') && /must-revalidate/.test(res.headers()['cache-control']), 'index.html is revalidated');
  const asset = await page.locator('script[type=module]').getAttribute('src');
  const assetRes = await page.request.get(base + asset);
  expect(/max-age=86400/.test(assetRes.headers()['cache-control'] ?? ''), 'assets are cached for a day');

  // A bad token is refused, visibly.
  await page.fill('#token', 'ten_1_wrong');
  await page.press('#token', 'Enter');
  await page.waitForSelector('.login .error');
  expect((await page.textContent('.login .error')).includes('not accepted'), 'a bad token is refused');

  // The admin signs in with the keyboard and sees running and sleeping instances.
  await page.fill('#token', ADMIN_TOKEN);
  await page.keyboard.press('Enter');
  await rowOf('web:alice').waitFor();
  await page.waitForFunction(() => document.querySelector('tr[data-instance="sleepy:bob"] .state')?.textContent === 'sleeping', null, { timeout: 30000 });
  expect((await rowOf('web:alice').locator('.state').textContent()) === 'running', 'web:alice shows running');
  expect((await rowOf('sleepy:bob').locator('.state').textContent()) === 'sleeping', 'sleepy:bob shows sleeping');
  expect(await page.evaluate(() => sessionStorage.getItem('tenement-token') !== null && localStorage.length === 0), 'the token is kept in the session only');
  await page.screenshot({ path: `${SHOTS}/instances.png`, fullPage: true });

  // Stop needs a confirmation; then the instance is gone.
  await rowOf('web:carol').getByRole('button', { name: 'Stop' }).click();
  await page.getByRole('alertdialog').waitFor();
  expect(await page.evaluate(() => document.activeElement?.textContent === 'Cancel'), 'the confirmation takes the focus, on Cancel');
  await page.keyboard.press('Escape');
  await page.getByRole('alertdialog').waitFor({ state: 'hidden' });
  expect(await rowOf('web:carol').count() === 1, 'Escape closes the confirmation and stops nothing');
  await rowOf('web:carol').getByRole('button', { name: 'Stop' }).click();
  await page.getByRole('alertdialog').waitFor();
  await page.screenshot({ path: `${SHOTS}/confirm-stop.png` });
  await page.getByRole('button', { name: 'Stop it' }).click();
  await rowOf('web:carol').waitFor({ state: 'detached', timeout: 30000 });
  expect(true, 'web:carol disappears after a confirmed stop');

  // An error from the server is shown.
  await page.fill('#svc', 'nope');
  await page.fill('#iid', 'x');
  await page.getByRole('button', { name: 'Spawn' }).click();
  await page.waitForSelector('section .error');
  expect((await page.textContent('section .error')).includes('unknown service'), 'a failed action shows its error');

  // Logs: search finds a line the fixture printed; times are local.
  await page.getByRole('button', { name: 'Logs' }).click();
  // Opening the view shows the first target's newest lines, no click needed.
  await page.waitForSelector('.log li time');
  expect(true, 'the logs view loads lines on opening');
  await page.selectOption('#target', 'web:alice');
  await page.fill('#search', 'listening');
  await page.getByRole('button', { name: 'Show' }).click();
  await page.waitForSelector('.log li:has-text("listening on")');
  const stamp = await page.locator('.log li time').first().textContent();
  expect(stamp === new Date(Number(await page.locator('.log li time').first().evaluate((t) => Date.parse(t.getAttribute('datetime'))))).toLocaleString(), 'timestamps are in local time');
  expect(true, 'log search finds the fixture line');
  // Live tail follows new lines.
  await page.fill('#search', '');
  await page.check('input[type=checkbox]');
  await page.getByRole('button', { name: 'Show' }).click();
  await page.waitForTimeout(500);
  await hostGet('alice.web.tenement.test', '/say?text=tailed-by-the-dashboard');
  await page.waitForSelector('.log li:has-text("tailed-by-the-dashboard")', { timeout: 30000 });
  expect(true, 'the live tail shows a new line');
  await page.screenshot({ path: `${SHOTS}/logs.png`, fullPage: true });

  // Overview charts, from /metrics.
  await page.getByRole('button', { name: 'Overview' }).click();
  await page.waitForSelector('figure svg');
  await page.waitForTimeout(3500);
  expect((await page.locator('figure').count()) === 3, 'three charts');
  await page.screenshot({ path: `${SHOTS}/overview.png`, fullPage: true });

  // Narrow screens.
  await page.setViewportSize({ width: 375, height: 740 });
  await page.getByRole('button', { name: 'Instances' }).click();
  await rowOf('web:alice').waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow <= 1, `no horizontal scrolling at 375 px (${overflow})`);
  await page.screenshot({ path: `${SHOTS}/instances-375.png`, fullPage: true });

  // A tenant sees only its own instances.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.fill('#token', TENANT_TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await rowOf('web:alice').waitFor();
  await page.waitForTimeout(2500);
  expect((await page.locator('tr[data-instance]').count()) === 1, 'the tenant sees one instance');
  expect((await rowOf('sleepy:bob').count()) === 0, 'the tenant does not see sleepy:bob');
  await page.screenshot({ path: `${SHOTS}/tenant.png`, fullPage: true });

  expect(external.length === 0, `no external requests (${external.join(', ')})`);
} finally {
  await browser.close();
}
