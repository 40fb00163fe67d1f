// Debian's Chromium, headless, as the drivers here start it: playwright-core downloads no
// browser, and the flags keep Chromium off the network this machine does not have.
const { chromium } = require('playwright-core');

async function launch() {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic',
           '--no-first-run', '--disable-background-networking', '--disable-component-update',
           '--disable-sync'],
  });
}

module.exports = { launch };
