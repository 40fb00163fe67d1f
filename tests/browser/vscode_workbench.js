// Uses VS Code in the browser (code-server) as a user does, in real Chromium: logs in with the
// password, waits for the workbench, opens FILE from the explorer and prints the editor's text,
// appends a line and saves with Ctrl+S, then runs COMMAND in the integrated terminal. The test
// checks the results on the host (the terminal draws on a canvas: its effect is a file).
// Without COMMAND, it stops after reading the file.
//   node vscode_workbench.js URL PASSWORD FILE APPEND_TEXT SCREENSHOT.png [COMMAND]
const { launch } = require('./chromium');

async function main() {
  const [url, password, file, append, shot, command] = process.argv.slice(2);
  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  try {
    await page.goto(url, { timeout: 60000 });
    await page.locator('input[type="password"]').fill(password, { timeout: 30000 });
    await page.keyboard.press('Enter');
    await page.locator('.monaco-workbench').waitFor({ timeout: 60000 });
    const row = page.locator('.explorer-folders-view .monaco-list-row', { hasText: file }).first();
    await row.click({ timeout: 60000 });
    const lines = page.locator('.editor-instance .view-lines').first();
    await lines.waitFor({ timeout: 30000 });
    await page.waitForFunction(
      () => (document.querySelector('.editor-instance .view-lines')?.innerText || '').trim().length > 0,
      null, { timeout: 30000 });
    console.log(`EDITOR: ${(await lines.innerText()).replace(/\u00a0/g, ' ')}`);
    if (command === undefined) return;
    await lines.click();
    await page.keyboard.press('Control+End');
    await page.keyboard.press('End');
    await page.keyboard.type(`\n${append}`);
    await page.keyboard.press('Control+s');
    await page.locator('.tabs-container .tab.dirty').waitFor({ state: 'detached', timeout: 30000 });
    console.log('SAVED');
    await page.keyboard.press('Control+Backquote');
    const terminal = page.locator('.terminal-wrapper .xterm').first();
    await terminal.waitFor({ timeout: 60000 });
    await terminal.click();
    // The shell's prompt first: keys typed before it may be lost.
    await page.waitForTimeout(3000);
    await page.keyboard.type(command);
    await page.keyboard.press('Enter');
    await page.waitForTimeout(2000);
    console.log('TYPED');
  } catch (e) {
    const body = await page.locator('body').innerText().catch(() => '');
    console.error(`${e}\n--- page text ---\n${body.slice(0, 3000)}`);
    process.exitCode = 1;
  } finally {
    await page.screenshot({ path: shot }).catch(() => {});
    await browser.close();
  }
}
main();
