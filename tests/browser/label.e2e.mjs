// Drives the labeling page in headless Chromium, as an annotator would, for tests/label_browser.rs.
//
//   LABEL_URL=http://127.0.0.1:PORT LABEL_TOKEN=... node label.e2e.mjs
//
// The server must hold exactly four pairs and no labels. The script signs in (after a rejected
// token), labels three pairs with ←, → and T, undoes the tie with U, reloads (the token and the
// held pair survive), labels that pair again with 1, skips the last with S and sees "nothing
// left". It checks what the page shows on the way and prints, as the last line of stdout, the
// labels it gave with the texts (and the turns of a conversational prompt) it saw, for the Rust
// test to check against the database.
// With SCREENSHOT=FILE it only signs in and saves a picture of the first pair (for the docs).
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';

const url = process.env.LABEL_URL;
const token = process.env.LABEL_TOKEN;
assert.ok(url && token, 'set LABEL_URL and LABEL_TOKEN');
const TIMEOUT = 10_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.setDefaultTimeout(TIMEOUT);
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  // /api/stats counts over every pair: the page must not ask for it after each label.
  const statsRequests = [];
  page.on('request', (request) => {
    if (new URL(request.url()).pathname === '/api/stats') statsRequests.push(request.url());
  });

  await page.goto(url);
  await page.waitForSelector('body[data-view="sign-in"]');

  if (process.env.SCREENSHOT) {
    await takeScreenshot(page, process.env.SCREENSHOT);
  } else {
    await labelFourPairs(page);
    assert.deepEqual(pageErrors, [], 'no script errors');
    // Sign-in with the wrong token, sign-in, the undo, the reload and "nothing left": five
    // requests for six answers and an undo.
    assert.equal(statsRequests.length, 5, `requests for /api/stats: ${statsRequests.length}`);
  }
} finally {
  await browser.close();
}

async function takeScreenshot(page, path) {
  await signIn(page, token);
  await page.waitForSelector('#labeling[data-shown="1"]');
  await page.waitForFunction(() => /remaining/.test(document.getElementById('progress').textContent));
  await page.setViewportSize({ width: 1100, height: 720 });
  await page.screenshot({ path });
}

async function labelFourPairs(page) {
  // A wrong token is refused with a visible message, and the form stays.
  await signIn(page, 'not-a-valid-token');
  await page.waitForSelector('#error:not([hidden])');
  assert.match(await text(page, '#error'), /not accepted/);
  assert.equal(await page.getAttribute('body', 'data-view'), 'sign-in');

  await signIn(page, token);
  await page.waitForSelector('#labeling[data-shown="1"]');
  assert.equal(await page.isHidden('#error'), true, 'the old error is cleared after signing in');
  await page.waitForFunction(() => document.getElementById('progress').textContent === '0 done · 4 remaining');

  // Side by side on a wide screen, stacked on a narrow one.
  const [wideLeft, wideRight] = await boxes(page);
  assert.equal(wideLeft.y, wideRight.y, 'responses side by side');
  assert.ok(wideLeft.x + wideLeft.width <= wideRight.x);
  await page.setViewportSize({ width: 480, height: 800 });
  const [narrowLeft, narrowRight] = await boxes(page);
  assert.ok(narrowLeft.y + narrowLeft.height <= narrowRight.y, 'responses stacked on a narrow screen');
  await page.setViewportSize({ width: 1200, height: 800 });

  const labels = [];
  const first = await answer(page, 'ArrowLeft', 1);
  labels.push({ ...first, preferred: 'left' });
  await page.waitForFunction(() => document.getElementById('progress').textContent === '1 done · 3 remaining');
  const second = await answer(page, 'ArrowRight', 2);
  labels.push({ ...second, preferred: 'right' });
  const tied = await answer(page, 't', 3);
  assert.equal(await page.isEnabled('#undo'), true, 'undo is offered right after a label');

  // Undo brings the tied pair back, in the same left/right order.
  await page.keyboard.press('u');
  await page.waitForSelector('#labeling[data-shown="5"]');
  assert.deepEqual(await shownPair(page), tied, 'undo shows the undone pair again');
  assert.match(await text(page, '#notice'), /Undid your label of pair/);

  // Reloading keeps the sign-in (localStorage) and the pair this annotator holds.
  await page.reload();
  await page.waitForSelector('#labeling[data-shown="1"]');
  assert.deepEqual(await shownPair(page), tied, 'after a reload the held pair comes back unchanged');

  const relabeled = await answer(page, '1', 1);
  labels.push({ ...relabeled, preferred: 'left' });
  const skipped = await shownPair(page);
  await page.keyboard.press('s');
  await page.waitForSelector('body[data-view="done"]');
  labels.push({ ...skipped, preferred: 'skip' });
  assert.match(await text(page, '#done h2'), /Nothing left to label/);
  await page.waitForFunction(() => document.getElementById('progress').textContent === '4 done · 0 remaining');

  console.log(JSON.stringify({ labels }));
}

async function signIn(page, value) {
  await page.fill('#token', value);
  await page.press('#token', 'Enter');
}

async function text(page, selector) {
  return page.$eval(selector, (element) => element.textContent);
}

async function boxes(page) {
  return Promise.all(['#left', '#right'].map((selector) => page.locator(selector).boundingBox()));
}

// The pair on screen, as text; fails if any data turned into markup.
async function shownPair(page) {
  return page.evaluate(() => {
    const field = (id) => {
      const element = document.getElementById(id);
      if (element.childElementCount !== 0) throw new Error(`#${id} holds elements: data was parsed as HTML`);
      return element.textContent;
    };
    const pairId = Number(document.getElementById('labeling').dataset.pairId);
    // A conversational prompt shows as turns, each its role and its text.
    const conversation = document.getElementById('conversation');
    const turns = conversation.hidden ? [] : [...conversation.querySelectorAll('.turn')].map((turn) => {
      const content = turn.querySelector('.content');
      if (content.childElementCount !== 0) throw new Error('a turn holds elements: data was parsed as HTML');
      return { role: turn.dataset.role, content: content.textContent };
    });
    return { pair_id: pairId, prompt: field('prompt'), turns, left: field('left'), right: field('right') };
  });
}

// Answers the pair on screen with `key`, waits for the next view, returns the answered pair.
async function answer(page, key, shownBefore) {
  const pair = await shownPair(page);
  await page.keyboard.press(key);
  await page.waitForFunction(
    (before) => document.body.dataset.view === 'done'
      || Number(document.getElementById('labeling').dataset.shown) > before,
    shownBefore,
  );
  return pair;
}
