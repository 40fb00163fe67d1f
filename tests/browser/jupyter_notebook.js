// Creates a notebook in JupyterLab the way a user does, in real Chromium: the launcher's
// Python tile, a typed cell, Ctrl+S, a name in the rename dialog. Prints the saved notebook's
// name on success; exits 1 with a screenshot and the page's text otherwise.
//   node jupyter_notebook.js LAB_URL TEXT NAME.ipynb SCREENSHOT.png
const { launch } = require('./chromium');

async function main() {
  const [url, text, name, shot] = process.argv.slice(2);
  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  try {
    await page.goto(url, { timeout: 60000 });
    await page.locator('.jp-LauncherCard[data-category="Notebook"]').first().click({ timeout: 60000 });
    const editor = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .cm-content').first();
    await editor.click({ timeout: 60000 });
    await page.keyboard.type(`print(${JSON.stringify(text)})`);
    await page.keyboard.press('Control+s');
    // JupyterLab 4 asks for a name on an Untitled notebook's first save: give it one, as a
    // user does.
    const rename = page.getByRole('button', { name: 'Rename and Save' });
    await rename.waitFor({ timeout: 15000 });
    await page.locator('.jp-Dialog input[type="text"]').first().fill(name);
    await rename.click();
    // Done when the server holds the typed text. The kernel's start can mark the notebook
    // changed again (its metadata), so save once more while it does not.
    const token = new URL(url).searchParams.get('token');
    const api = new URL(`/api/contents/${encodeURIComponent(name)}?content=1&token=${token}`, url).href;
    const deadline = Date.now() + 30000;
    for (;;) {
      const r = await page.request.get(api);
      if (r.ok() && (await r.text()).includes(text)) break;
      if (Date.now() > deadline) throw new Error(`${name} on the server lacks the typed text`);
      await page.waitForTimeout(1000);
      await page.keyboard.press('Control+s');
    }
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
