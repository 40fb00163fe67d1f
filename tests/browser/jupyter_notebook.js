// Creates a notebook in JupyterLab the way a user does, in real Chromium: the launcher's
// Python tile, a typed cell, Ctrl+S. Prints the saved notebook's path (relative to the server's
// root) on success; exits 1 with a screenshot and the page's text otherwise.
//   node jupyter_notebook.js LAB_URL TEXT SCREENSHOT.png
const { chromium } = require('playwright-core');

async function main() {
  const [url, text, shot] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic',
           '--no-first-run', '--disable-background-networking', '--disable-component-update',
           '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  try {
    await page.goto(url, { timeout: 60000 });
    await page.locator('.jp-LauncherCard[data-category="Notebook"]').first().click({ timeout: 60000 });
    const editor = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .cm-content').first();
    await editor.click({ timeout: 60000 });
    await page.keyboard.type(`print(${JSON.stringify(text)})`);
    await page.keyboard.press('Control+s');
    // The tab's title is the file's name; the dirty mark goes once the server saved it.
    const tab = page.locator('.jp-mod-current .lm-TabBar-tabLabel, li.lm-mod-current .lm-TabBar-tabLabel').first();
    await page.waitForFunction(
      () => !document.querySelector('li.lm-mod-current.jp-mod-dirty'), null, { timeout: 30000 });
    const name = (await tab.textContent()).trim();
    await page.screenshot({ path: shot });
    console.log(name);
  } catch (e) {
    await page.screenshot({ path: shot }).catch(() => {});
    const body = await page.locator('body').innerText().catch(() => '');
    console.error(`${e}\n--- page text ---\n${body.slice(0, 3000)}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}
main();
