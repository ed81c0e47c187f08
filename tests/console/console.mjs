// Drives Debian's headless Chromium against a running `switchyard serve`
// (tests/e2e/console_spec.lua starts it and checks what this prints):
//
//   node console.mjs BASE_URL SCREENSHOT_DIR INSTANCE_ID [TOKEN]
//
// Without TOKEN: loads each page, noting the console errors and failed
// requests it had, reads the numbers the page shows, saves a screenshot of
// it; then retries INSTANCE_ID on the incidents page without a token.
// With TOKEN: retries INSTANCE_ID there with it. Prints one JSON document
// on stdout.
import { chromium } from 'playwright-core';

const [base, shots, instance, token] = process.argv.slice(2);
// Chromium puts a socket in $TMPDIR, whose path must fit a socket's
// (108 bytes): the test suite's may not.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
  env: { ...process.env, TMPDIR: '/tmp' },
});
const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
let errors = [];
page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
page.on('pageerror', (e) => errors.push(String(e)));
page.on('requestfailed', (r) => errors.push('request failed: ' + r.url()));

const out = { pages: {} };
const pages = token ? [] : [
  ['overview', '/'],
  ['incidents', '/incidents'],
  ['workflow', '/workflows/counted'],
  ['flags', '/flags'],
  ['flag', '/flags/checkout'],
  ['instance', '/instances/' + instance],
];
for (const [name, path] of pages) {
  errors = [];
  const resp = await page.goto(base + path, { waitUntil: 'load' });
  const shown = await page.evaluate(() => {
    const cells = (sel, attr) => Object.fromEntries(
      [...document.querySelectorAll(sel)].map((td) =>
        [td.getAttribute(attr), Number(td.textContent.trim())]));
    return {
      title: document.title,
      states: cells('td[data-state]', 'data-state'),
      v1: cells('td[data-v1]', 'data-v1'),
      v2: cells('td[data-v2]', 'data-v2'),
      count: document.getElementById('count')?.textContent ?? null,
      state: document.getElementById('state')?.textContent ?? null,
      verdict: document.getElementById('verdict')?.textContent ?? null,
    };
  });
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  out.pages[name] = { status: resp.status(), errors: [...errors], ...shown };
}

// Retry through the page: refused without the token, done with it.
async function retry(withToken) {
  await page.goto(base + '/incidents', { waitUntil: 'load' });
  if (withToken) await page.fill('#token', token);
  await page.click(`button[data-retry="${instance}"]`);
  await page.waitForFunction(() => document.getElementById('result').textContent !== '');
  return page.evaluate(() => {
    const r = document.getElementById('result');
    return { status: Number(r.dataset.status), text: r.textContent };
  });
}
if (token) {
  out.retry = await retry(true);
  await page.screenshot({ path: `${shots}/retried.png`, fullPage: true });
} else {
  out.retry = await retry(false);
}
await browser.close();
process.stdout.write(JSON.stringify(out) + '\n');
