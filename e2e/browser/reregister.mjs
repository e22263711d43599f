// Drives the viewer page in Debian's headless Chromium through its subscriber losing its upstream:
//
//   node e2e/browser/reregister.mjs <page url> <subscriber it must move to (ws://host:port)>
//
// 1. loads the page and waits until its WebSocket is live; prints `LIVE` on its own line, so that
//    the test (broadcaster/tests/page.rs) now cuts that subscriber off from the tier above;
// 2. waits for the page to POST the main publisher's /register (answered 200) and to be watching
//    the other subscriber, live again;
// 3. waits until the page holds an epoch frame received after the move, then reads which epochs
//    it holds.
//
// Every wait is on a condition with a deadline. On success the last stdout line is one JSON
// object ({"first","registered","now","epochs","states"}) for the Rust test to check; on failure
// the exit code is 1 and the page's console is printed.
import { chromium } from 'playwright-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [pageUrl, nextSubscriber] = process.argv.slice(2);
if (!pageUrl || !nextSubscriber) {
  console.error('usage: node reregister.mjs <page url> <ws://host:port of the next subscriber>');
  process.exit(2);
}

const LIVE_MS = 30_000;
// The subscriber notices its upstream is gone after 5 s, then the page backs off (under a
// second on its first try) and the main publisher may still place it on the cut-off subscriber
// for 3 s, which costs a refusal and a longer backoff: well within this on a loaded machine.
const MOVED_MS = 60_000;

const userDataDir = await mkdtemp(join(tmpdir(), 'emostream-chromium-'));
const consoleLines = [];
let context;
let failed = false;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => consoleLines.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => consoleLines.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));

  const loaded = await page.goto(pageUrl);
  check(loaded?.status() === 200, `the page answered ${loaded?.status()}`);
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: LIVE_MS });
  const first = await page.evaluate(() => state.subscriber);
  // Every connection state the page shows from now on, in order.
  await page.evaluate(() => {
    window.seenStates = [];
    const conn = document.getElementById('conn');
    new MutationObserver(() => {
      window.seenStates.push(`${conn.dataset.state}: ${document.getElementById('conn-text').textContent}`);
    }).observe(conn, { attributes: true, childList: true, subtree: true, characterData: true });
  });

  const isRegister = (r) => r.method() === 'POST' && new URL(r.url()).pathname === '/register';
  const registered = page.waitForResponse(
    (r) => isRegister(r.request()) && r.status() === 200,
    { timeout: MOVED_MS },
  );
  console.log('LIVE');

  const answer = await (await registered).json();
  await page.waitForFunction(
    (next) => state.subscriber === next && state.ws !== null && state.ws.readyState === WebSocket.OPEN,
    nextSubscriber,
    { timeout: MOVED_MS, polling: 100 },
  );
  const movedAt = await page.evaluate(() => state.lastEpoch);
  await page.waitForFunction((after) => state.lastEpoch > after, movedAt, { timeout: MOVED_MS, polling: 100 });

  const result = await page.evaluate(() => ({
    now: state.subscriber,
    epochs: [...state.frames.keys()].sort((a, b) => a - b),
    states: window.seenStates,
  }));
  // Only the page's own exceptions: Chromium logs every refused WebSocket (a 503 from the cut-off
  // subscriber while placement still names it) and failed fetch as console errors, and those
  // are what the page is here to ride out.
  const errors = consoleLines.filter((l) => l.startsWith('pageerror'));
  check(errors.length === 0, `no exceptions on the page:\n${errors.join('\n')}`);
  console.log(JSON.stringify({ first, registered: answer.subscriber, ...result }));
} catch (e) {
  failed = true;
  console.error(`browser test failed: ${e.message}`);
  for (const line of consoleLines) console.error(`  ${line}`);
} finally {
  await context?.close();
  await rm(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);

function check(ok, what) {
  if (!ok) throw new Error(what);
}
