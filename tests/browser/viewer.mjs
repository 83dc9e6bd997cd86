// Drives the viewer page in headless Chromium: it must show real corpus messages, resume
// with nothing lost or repeated after the server drops the stream, and show a gap
// notice after a server restart.
//
// Usage: node viewer.mjs BASE_URL CORPUS_PATH SCREENSHOT_DIR
// Prints one JSON line per step; after {"step":"restart"} it waits for the line
// "restarted" on stdin, which the Rust test writes once a new server listens on the same
// port. Exits 1 with {"step":"failed"} on any failed check.
import { readFileSync } from 'node:fs';
import readline from 'node:readline';
import { launch, pushMessages, report } from './chromium.mjs';

const [baseUrl, corpusPath, screenshotDir] = process.argv.slice(2);
const TIMEOUT_MS = 60000;
const FIRST_BATCH = 40;
const BURST = 80;
const MAX_BURSTS = 5;

const corpus = readFileSync(corpusPath, 'utf8').split('\n').filter((line) => line.length > 0);
const stdin = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function check(condition, message) {
  if (!condition) throw new Error(message);
}

function idStrOf(line) {
  return String(JSON.parse(line).id_str);
}

// The id_str of every message row the page shows, newest first.
function shownIds(page) {
  return page.$$eval('#messages li.message', (rows) => rows.map((row) => row.dataset.idStr));
}

async function waitForRows(page, count) {
  await page.waitForFunction((wanted) => document.querySelectorAll('#messages li.message').length >= wanted, count, {
    timeout: TIMEOUT_MS,
  });
}

async function main() {
  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));

  await page.goto(`${baseUrl}/?channel=all`);
  await page.waitForFunction(() => window.lokstreamViewer.opens >= 1, null, { timeout: TIMEOUT_MS });
  report('loaded');

  // Message text is untrusted: markup in it must show as text and never run.
  const xss = JSON.stringify({
    source_type: 'TWITTER',
    id_str: 'xss-1',
    screen_name: 'attacker',
    text: '<img src=x onerror="window.injected=1"> <b>not bold</b> #safe',
  });
  const pushed = [xss, ...corpus.slice(0, FIRST_BATCH)];
  await pushMessages(baseUrl, pushed);
  await waitForRows(page, pushed.length);

  // With a one-event client queue, a burst overflows it and the server drops the stream;
  // the page reconnects with Last-Event-ID. Bursts repeat until a reconnect was seen.
  let next = FIRST_BATCH;
  for (let burst = 0; burst < MAX_BURSTS; burst += 1) {
    const messages = corpus.slice(next, next + BURST);
    next += BURST;
    await pushMessages(baseUrl, messages);
    pushed.push(...messages);
    await waitForRows(page, pushed.length);
    if (await page.evaluate(() => window.lokstreamViewer.opens >= 2)) break;
  }
  const state = await page.evaluate(() => ({ ...window.lokstreamViewer, seen: undefined, seenOrder: undefined, source: undefined, perSecond: undefined }));
  check(state.opens >= 2, `the stream was never dropped and resumed (opens ${state.opens})`);

  const shown = await shownIds(page);
  const expected = pushed.map(idStrOf);
  check(shown.length === expected.length, `page shows ${shown.length} messages, ${expected.length} were pushed`);
  check(new Set(shown).size === shown.length, 'page shows a message twice');
  const missing = expected.filter((id) => !shown.includes(id));
  check(missing.length === 0, `page lacks messages ${missing.slice(0, 5).join(', ')}`);
  check(state.duplicates === 0, `page received ${state.duplicates} event ids twice`);
  check(state.gaps === 0, `a resume within the history showed ${state.gaps} gap notices`);
  check(await page.evaluate(() => window.injected === undefined), 'markup in a message ran as HTML');
  const xssText = await page.$eval('#messages li[data-id-str="xss-1"] .text', (node) => node.textContent);
  check(xssText.includes('<img src=x'), `markup was not shown as text: ${xssText}`);
  // The page requests busy channels every few seconds; wait for them to show.
  await page.waitForFunction(() => document.querySelectorAll('#suggestions li').length > 0, null, { timeout: TIMEOUT_MS });
  await page.screenshot({ path: `${screenshotDir}/viewer-resumed.png` });
  report('resumed', { shown: shown.length, opens: state.opens });

  // A restarted server has no history for the page's last id, so the page must show a gap.
  report('restart');
  const { value } = await stdin.next();
  check(value === 'restarted', `expected "restarted" on stdin, got ${value}`);
  await page.waitForFunction(() => window.lokstreamViewer.gaps >= 1, null, { timeout: TIMEOUT_MS });
  const after = corpus.slice(next, next + 5);
  await pushMessages(baseUrl, after);
  await waitForRows(page, pushed.length + after.length);
  const gapNotices = await page.$$eval('#messages li.gap', (rows) => rows.map((row) => row.textContent));
  check(gapNotices.length === 1, `expected one gap notice, found ${gapNotices.length}`);
  await page.screenshot({ path: `${screenshotDir}/viewer-gap.png` });

  check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
  await browser.close();
  report('done', { shown: pushed.length + after.length });
}

main().then(
  () => process.exit(0),
  (error) => {
    report('failed', { error: String(error && error.stack ? error.stack : error) });
    process.exit(1);
  },
);
