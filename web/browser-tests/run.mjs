// The browser test, driven by cli/tests/all/browser.rs against a real `tally edge` and
// `tally merger`: Debian's chromium (through playwright-core) opens a player page with a
// real <video> playing clip.webm and tally.js attached, likes, reloads inside the
// session, leaves; then opens the merger's dashboard and reads the counts from its DOM,
// saving screenshots. Prints one JSON line with what it saw.
//
// Environment: AGENT, MERGER (base URLs), TOKEN_KEY (the edges' signing key), API_KEY
// (a platform key), VIDEO (id to play), OUT (directory for screenshots).
import { chromium } from "playwright-core";
import { createHmac } from "node:crypto";
import { readFileSync, mkdirSync } from "node:fs";
import { createServer } from "node:http";

const { AGENT, MERGER, TOKEN_KEY, API_KEY, VIDEO, OUT } = process.env;
mkdirSync(OUT, { recursive: true });
const clip = readFileSync(new URL("./clip.webm", import.meta.url));
// The platform's player page, from its own server on loopback (another origin than the
// edge, as a platform's page would be: beacons cross origins).
const server = createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/clip.webm") {
    res.writeHead(200, { "content-type": "video/webm" });
    return res.end(clip);
  }
  if (url.pathname === "/token") {
    res.writeHead(200, { "content-type": "text/plain" });
    return res.end(mint(url.searchParams.get("sid")));
  }
  res.writeHead(200, { "content-type": "text/html" });
  res.end(page_html_of(player));
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const player = `http://127.0.0.1:${server.address().port}/`;
const b64 = (x) => Buffer.from(x).toString("base64url");

/** Minting a playback token in Node without a library: an HS256 JWT. */
function mint(sid) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64(JSON.stringify({ vid: VIDEO, ch: "ch-browser", cat: "music", live: VIDEO.startsWith("live"), sid, iat: now - 5, exp: now + 3600 }));
  const sig = createHmac("sha256", TOKEN_KEY).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

const page_html_of = (player) => `<!doctype html><meta charset=utf-8><title>player</title>
<video id=v src="${player}clip.webm" muted playsinline autoplay width=320></video>
<button id=like>Like</button> views: <tally-views id=views video="${VIDEO}" endpoint="${AGENT}"></tally-views>
watching now: <tally-live id=live stream="${VIDEO}" endpoint="${AGENT}"></tally-live>
<script src="${AGENT}/tally.js"></script>
<script>
  const v = document.getElementById("v");
  window.tracker = Tally.attach(v, {
    endpoint: "${AGENT}", videoId: "${VIDEO}", heartbeatSeconds: 1, flushSeconds: 1, debug: true,
    token: (sid) => fetch("${player}token?sid=" + encodeURIComponent(sid)).then((r) => r.text()),
  });
  document.getElementById("like").onclick = () => tracker.like();
</script>`;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
  ],
});
const out = { ms: {} };
const t0 = Date.now();
const mark = (what) => (out.ms[what] = Date.now() - t0);
try {
  // a desktop browser's User-Agent: a headless one is (rightly) refused as a bot
  const context = await browser.newContext({
    userAgent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36",
  });
  // what the CDN in front of the edge would add to beacons: the viewer's country
  await context.route(`${AGENT}/v1/events`, (route) =>
    route.continue({ headers: { ...route.request().headers(), "cf-ipcountry": "DE" } })
  );
  const warnings = [];
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "warning") warnings.push(m.text());
    if (m.type() === "error") problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("requestfailed", (r) => problems.push(`${r.url()}: ${r.failure()?.errorText}`));
  await page.goto(player);
  await page.waitForFunction(() => document.getElementById("v").currentTime > 2.5, null, { timeout: 20000 });
  if (await page.evaluate(() => typeof Tally === "undefined")) throw new Error("tally.js did not load: " + problems.join("; "));
  mark("played");
  out.session = await page.evaluate(() => Tally.sessionId());
  // the live viewer count, by SSE from the edge (the merger pushes the stream's gauge)
  await page
    .waitForFunction(() => document.getElementById("live").getAttribute("watching") === "1", null, { timeout: 30000 })
    .catch(() => {});
  out.live_element = await page.evaluate(() => document.getElementById("live").getAttribute("watching"));
  mark("live");
  await page.click("#like");
  await page.waitForTimeout(1500);
  // a reload inside the session: the same session, so no new view
  await page.reload();
  await page.waitForFunction(() => document.getElementById("v").currentTime > 1, null, { timeout: 20000 });
  out.session_after_reload = await page.evaluate(() => Tally.sessionId());
  await page.waitForTimeout(1200);
  out.views_element = await page.evaluate(() => document.getElementById("views").getAttribute("views"));
  await page.close({ runBeforeUnload: true });
  out.refusals = warnings;
  mark("left");
  out.problems = problems;

  // the dashboard, with the key in the fragment (kept in the browser, not sent in URLs)
  const dash = await context.newPage();
  const want = Number(process.env.WANT_VIEWS || "1");
  let shown = null;
  for (let i = 0; i < 30 && shown !== String(want); i++) {
    await dash.goto(`${MERGER}/#key=${API_KEY}`);
    await dash.waitForFunction(() => document.body.dataset.loaded || document.getElementById("status").className === "error", null, { timeout: 15000 });
    shown = await dash.evaluate(() => document.getElementById("kpi-views").dataset.value);
    if (shown !== String(want)) await dash.waitForTimeout(1000);
  }
  mark("dashboard");
  out.dashboard = await dash.evaluate(() => ({
    views: document.getElementById("kpi-views").dataset.value,
    likes: document.getElementById("kpi-likes").dataset.value,
    uniques: document.getElementById("kpi-uniques").dataset.value,
    watch_s: document.getElementById("kpi-watch").dataset.value,
    videos: [...document.querySelectorAll("#t-video tbody tr")].map((r) => r.dataset.key),
    status: document.getElementById("status").textContent,
    map_de: document.querySelector('#map path[data-country="DE"]')?.dataset.views,
    map_fr: document.querySelector('#map path[data-country="FR"]')?.dataset.views,
  }));
  // a filter by click: the video's row narrows everything to it
  await dash.click(`#t-video tbody tr[data-key="${VIDEO}"]`);
  await dash.waitForFunction(() => document.querySelectorAll("#filters .chip").length === 1, null, { timeout: 10000 });
  await dash.waitForFunction(() => document.getElementById("status").textContent === "", null, { timeout: 10000 });
  out.filtered_views = await dash.evaluate(() => document.getElementById("kpi-views").dataset.value);
  mark("filtered");
  await dash.setViewportSize({ width: 1280, height: 1100 });
  await dash.screenshot({ path: `${OUT}/dashboard.png`, fullPage: true });
  await dash.setViewportSize({ width: 390, height: 844 });
  await dash.waitForTimeout(300);
  out.phone_overflow = await dash.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  await dash.screenshot({ path: `${OUT}/dashboard-phone.png` });
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(out));
