// Opens a report's index.html from disk in headless Chromium, for tests/report.rs.
//
//   REPORT_FILE=/path/to/index.html SCREENSHOT=/path/to/shot.png node report.e2e.mjs
//
// With PAGE_HEIGHT=N the screenshot is the top N pixels instead of the full page (for the docs).
// Collects console errors, page errors and failed requests (the page must need nothing from
// the network), checks that every image decoded, saves a full-page screenshot and prints, as
// the last line of stdout, what it found.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { pathToFileURL } from 'node:url';

const file = process.env.REPORT_FILE;
const screenshot = process.env.SCREENSHOT;
assert.ok(file && screenshot, 'set REPORT_FILE and SCREENSHOT');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(10_000);
  const errors = [];
  page.on('console', (message) => { if (message.type() === 'error') errors.push(`console: ${message.text()}`); });
  page.on('pageerror', (error) => errors.push(`page: ${error.message}`));
  page.on('requestfailed', (request) => errors.push(`request failed: ${request.url()}`));
  page.on('request', (request) => {
    if (!request.url().startsWith('file:')) errors.push(`network request: ${request.url()}`);
  });

  await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });
  const images = await page.$$eval('img', (all) => all.map((img) => ({ src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0 })));
  const broken = images.filter((img) => !img.ok).map((img) => img.src);
  // Charts in the first row of the first stage's charts, at a laptop's and a wide screen's width.
  const perRow = {};
  for (const width of [1280, 1920, 700]) {
    await page.setViewportSize({ width, height: 900 });
    perRow[width] = await page.$eval('.charts', (charts) => {
      const tops = [...charts.querySelectorAll('figure')].map((figure) => figure.getBoundingClientRect().top);
      return tops.filter((top) => Math.abs(top - tops[0]) < 1).length;
    });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
  const height = Number(process.env.PAGE_HEIGHT ?? 0);
  if (height > 0) {
    await page.setViewportSize({ width: 1280, height });
    await page.screenshot({ path: screenshot });
  } else {
    await page.screenshot({ path: screenshot, fullPage: true });
  }
  console.log(JSON.stringify({ title: await page.title(), images: images.length, broken, errors, perRow }));
} finally {
  await browser.close();
}
