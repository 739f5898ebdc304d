// Generates clip.webm, the small video the browser tests play (run once; the file is
// committed): 4 s of a moving square at 64x36, VP8 at a low bit rate, recorded from a
// canvas by Debian's chromium. `node make-clip.mjs` (after ../../scripts/browser-deps).
import { chromium } from "playwright-core";
import { writeFileSync } from "node:fs";

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage();
await page.setContent("<canvas id=c width=64 height=36></canvas>");
const b64 = await page.evaluate(async () => {
  const c = document.getElementById("c");
  const g = c.getContext("2d");
  const rec = new MediaRecorder(c.captureStream(10), { mimeType: "video/webm;codecs=vp8", videoBitsPerSecond: 12000 });
  const parts = [];
  rec.ondataavailable = (e) => parts.push(e.data);
  let t = 0;
  const draw = setInterval(() => {
    g.fillStyle = "#123";
    g.fillRect(0, 0, 64, 36);
    g.fillStyle = "#fc3";
    g.fillRect((t * 3) % 64, 10, 12, 12);
    t++;
  }, 100);
  rec.start();
  await new Promise((r) => setTimeout(r, 4000));
  rec.stop();
  await new Promise((r) => (rec.onstop = r));
  clearInterval(draw);
  const buf = new Uint8Array(await new Blob(parts).arrayBuffer());
  let s = "";
  for (const x of buf) s += String.fromCharCode(x);
  return btoa(s);
});
writeFileSync(new URL("./clip.webm", import.meta.url), Buffer.from(b64, "base64"));
await browser.close();
