// Launches Debian's Chromium through playwright-core; no browser is downloaded.
import { chromium } from 'playwright-core';

// Flags that let Chromium run headless as root in a sandboxed machine with no network
// beyond loopback: without the background-networking ones it keeps trying Google hosts.
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
  });
}

// Prints one JSON line for the Rust test that runs this script.
export function report(step, detail = {}) {
  process.stdout.write(JSON.stringify({ step, ...detail }) + '\n');
}

export async function pushMessages(baseUrl, messages) {
  const response = await fetch(`${baseUrl}/api/push.json`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '[' + messages.join(',') + ']',
  });
  if (response.status !== 200) throw new Error(`push answered ${response.status}: ${await response.text()}`);
}
