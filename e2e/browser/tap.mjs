// Drives the viewer page in Debian's headless Chromium, as a viewer would use it:
//
//   node e2e/browser/tap.mjs <page url> <screenshot dir>
//
// 1. loads the page and waits until its WebSocket is live;
// 2. taps 🔥 and ❤️ at once and waits for the page's POST to the gateway, which must carry both and
//    be answered 202 for two taps;
// 3. waits until the page shows those taps counted. The system runs with a frame bound of one
//    emoji (`max_frame_emojis` = 1), so the frame lists ❤️ (equal counts go by UTF-8 bytes, and
//    ❤️'s are lower) and sums 🔥 in `other`: the epoch list row of the epoch the gateway named
//    holds ❤️ with count 1 and "+1 other 1", the latest-epoch chips end with "+1 more", and the
//    "your taps" box says counted for that epoch, 🔥 "in other";
// 4. saves page.png (desktop) and page-phone.png (a phone's viewport) in the screenshot dir.
//
// Every wait is on a condition with a deadline. On success the last stdout line is one JSON
// object ({"status","accepted","epoch","count","user_id"}) for the Rust test to check; on failure
// the exit code is 1 and the page's console is printed.
import { chromium } from 'playwright-core';
import { mkdtemp, rm, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [pageUrl, shotDir] = process.argv.slice(2);
if (!pageUrl || !shotDir) {
  console.error('usage: node tap.mjs <page url> <screenshot dir>');
  process.exit(2);
}

// Tapped in this order; LISTED is the one a one-emoji frame lists.
const TAPPED = ['🔥', '❤️'];
const LISTED = '❤️';
const LIVE_MS = 30_000;
const ACK_MS = 30_000;
// The epoch must close (window + allowed lateness) and pass three broadcaster tiers.
const COUNTED_MS = 60_000;

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
    viewport: { width: 1280, height: 800 },
    deviceScaleFactor: 1,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => consoleLines.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => consoleLines.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));

  const loaded = await page.goto(pageUrl);
  check(loaded?.status() === 200, `the page answered ${loaded?.status()}`);
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: LIVE_MS });
  const buttons = await page.locator('#tap-buttons button').count();
  check(buttons === 12, `12 emoji buttons, found ${buttons}`);

  const isTap = (r) => r.method() === 'POST' && /\/v1\/streams\/[^/]+\/emojis$/.test(new URL(r.url()).pathname);
  const answered = page.waitForResponse((r) => isTap(r.request()), { timeout: ACK_MS });
  // A request the browser itself blocks (CORS) never gets a response: fail on it at once.
  const blocked = page.waitForEvent('requestfailed', { predicate: isTap, timeout: ACK_MS }).then(
    (r) => {
      throw new Error(`the tap's POST to ${r.url()} failed: ${r.failure()?.errorText} (does the gateway answer CORS?)`);
    },
    () => new Promise(() => {}), // no failure before the deadline: leave the race to `answered`
  );
  // Both clicks in one task of the page, so both taps go out in one POST, in one epoch.
  await page.evaluate((emojis) => {
    for (const e of emojis) document.querySelector(`#tap-buttons button[data-emoji="${e}"]`).click();
  }, TAPPED);
  const response = await Promise.race([answered, blocked]);
  const sentBody = JSON.parse(response.request().postData() ?? 'null');
  check(Array.isArray(sentBody) && sentBody.map((t) => t.emoji).join() === TAPPED.join(),
    `the page POSTed ${TAPPED.join(' and ')}, sent ${JSON.stringify(sentBody)}`);
  const status = response.status();
  const ack = await response.json();
  check(status === 202, `the gateway answered ${status}: ${JSON.stringify(ack)}`);
  check(ack.accepted === 2, `accepted 2, got ${ack.accepted}`);

  const row = page.locator(`#epochs li[data-epoch="${ack.epoch}"]`);
  const cell = row.locator(`[data-emoji="${LISTED}"]`);
  await cell.waitFor({ timeout: COUNTED_MS });
  const count = Number(await cell.getAttribute('data-count'));
  check(count === 1, `epoch ${ack.epoch} shows ${LISTED} ×1, shows ${count}`);
  const cellText = await cell.textContent();
  check(cellText === `${LISTED} 1`, `the row reads "${LISTED} 1", reads "${cellText}"`);
  const other = row.locator('.other');
  const otherText = await other.textContent();
  check(otherText === '+1 other 1' && (await other.getAttribute('data-distinct')) === '1',
    `the row sums the unlisted emoji as "+1 other 1", reads "${otherText}"`);
  const more = await page.locator('#now-emojis li.more').textContent();
  check(more === '+1 more1', `the latest epoch's chips end with "+1 more" and its 1 tap, read "${more}"`);
  const mine = page.locator(`#mine[data-state="counted"][data-epoch="${ack.epoch}"]`);
  await mine.waitFor({ timeout: COUNTED_MS });
  const mineText = await mine.textContent();
  check(mineText.startsWith('✓ Your 2 taps counted') && mineText.endsWith(`🔥 in other · ${LISTED} 1`), `"your taps" says counted: ${mineText}`);
  const counted = await page.locator('#counted').textContent();
  check(counted === '2', `the tap bar counts 2 counted taps, shows ${counted}`);

  await mkdir(shotDir, { recursive: true });
  await page.screenshot({ path: join(shotDir, 'page.png') });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(shotDir, 'page-phone.png') });

  const errors = consoleLines.filter((l) => l.startsWith('pageerror') || l.startsWith('console.error'));
  check(errors.length === 0, `no errors on the page:\n${errors.join('\n')}`);
  console.log(JSON.stringify({
    status, accepted: ack.accepted, epoch: ack.epoch, count, user_id: sentBody[0].user_id,
  }));
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
