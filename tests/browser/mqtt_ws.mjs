// MQTT.js in headless Chromium subscribes over WebSocket to a channel and must receive the
// real corpus messages pushed to it.
//
// Usage: node mqtt_ws.mjs BASE_URL WS_URL CORPUS_PATH
// Prints {"step":"done",...} and exits 0, or {"step":"failed",...} and exits 1.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { launch, pushMessages, report } from './chromium.mjs';

const [baseUrl, wsUrl, corpusPath] = process.argv.slice(2);
const TAG = 'macselena';
const CHANNEL = `twitter/hashtag/${TAG}`;
const COUNT = 5;
const TIMEOUT_MS = 30000;

async function main() {
  const tagged = readFileSync(corpusPath, 'utf8')
    .split('\n')
    .filter((line) => line.length > 0 && JSON.parse(line).text?.toLowerCase().includes(`#${TAG}`))
    .slice(0, COUNT);
  const bundle = fileURLToPath(new URL('./node_modules/mqtt/dist/mqtt.min.js', import.meta.url));

  const browser = await launch();
  const page = await browser.newPage();
  // about:blank has an opaque origin, and Chromium drops WebSocket connections from it
  // before sending the handshake, so the page comes from the server.
  await page.goto(`${baseUrl}/healthz`);
  await page.addScriptTag({ path: bundle });
  await page.evaluate(
    async ({ url, channel, timeout }) => {
      window.received = [];
      const client = window.mqtt.connect(url, {
        protocolVersion: 4,
        clientId: `browser-${Date.now()}`,
        connectTimeout: timeout,
        reconnectPeriod: 0,
      });
      await new Promise((resolve, reject) => {
        client.once('connect', resolve);
        client.once('error', reject);
        client.once('close', () => reject(new Error('the WebSocket closed before CONNACK')));
      });
      await new Promise((resolve, reject) => {
        client.subscribe(channel, { qos: 0 }, (error) => (error ? reject(error) : resolve()));
      });
      client.on('message', (topic, payload) => window.received.push({ topic, text: new TextDecoder().decode(payload) }));
    },
    { url: wsUrl, channel: CHANNEL, timeout: TIMEOUT_MS },
  );
  report('subscribed');

  await pushMessages(baseUrl, tagged);
  await page.waitForFunction((count) => window.received.length >= count, COUNT, { timeout: TIMEOUT_MS });
  const received = await page.evaluate(() => window.received);
  const ids = received.map((message) => JSON.parse(message.text).id_str);
  const expected = tagged.map((line) => JSON.parse(line).id_str);
  if (JSON.stringify(ids) !== JSON.stringify(expected)) throw new Error(`received ${ids} instead of ${expected}`);
  if (!received.every((message) => message.topic === CHANNEL)) throw new Error(`wrong topics ${received.map((m) => m.topic)}`);
  await browser.close();
  report('done', { received: ids.length });
}

main().then(
  () => process.exit(0),
  (error) => {
    report('failed', { error: String(error && error.stack ? error.stack : error) });
    process.exit(1);
  },
);
