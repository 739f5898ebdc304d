// Unit tests of tally.js under node's test runner (`node --test web/sdk/test/`), with the
// browser APIs it uses stubbed: storage, navigator.sendBeacon, fetch, media events.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

class MemoryStorage {
  constructor() { this.m = new Map(); }
  getItem(k) { return this.m.has(k) ? this.m.get(k) : null; }
  setItem(k, v) { this.m.set(k, String(v)); }
  removeItem(k) { this.m.delete(k); }
  clear() { this.m.clear(); }
}

globalThis.sessionStorage = new MemoryStorage();
globalThis.localStorage = new MemoryStorage();
globalThis.document = Object.assign(new EventTarget(), { visibilityState: "visible" });
globalThis.addEventListener = EventTarget.prototype.addEventListener.bind(new EventTarget());
const win = new EventTarget();
globalThis.addEventListener = win.addEventListener.bind(win);
globalThis.removeEventListener = win.removeEventListener.bind(win);
globalThis.dispatchEvent = win.dispatchEvent.bind(win);

const beacons = [];
let beaconWorks = true;
const nav = { onLine: true, sendBeacon: (url, blob) => { if (!beaconWorks) return false; beacons.push({ url, blob }); return true; } };
Object.defineProperty(globalThis, "navigator", { value: nav, configurable: true, writable: true });
const fetches = [];
let fetchAnswer = () => new Response(JSON.stringify({ accepted: 1, duplicates: 0, rejected: [] }), { status: 202 });
globalThis.fetch = async (url, init) => { fetches.push({ url, init }); return fetchAnswer(init); };

await import("../tally.js");
const Tally = globalThis.Tally;

class FakeMedia extends EventTarget {
  constructor() { super(); this.currentTime = 0; this.ended = false; }
  fire(type) { this.dispatchEvent(new Event(type)); }
}

const sent = async () => {
  const out = [];
  for (const b of beacons) out.push(...JSON.parse(await b.blob.text()).events);
  for (const f of fetches) out.push(...JSON.parse(f.init.body).events);
  return out;
};
const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

let trackers = [];
const attach = (media, opts) => {
  const t = Tally.attach(media, { endpoint: "http://edge.test/", videoId: "v1", token: "tok", ...opts });
  trackers.push(t);
  return t;
};

beforeEach(async () => {
  for (const t of trackers) await t.detach();
  trackers = [];
  beacons.length = 0;
  fetches.length = 0;
  beaconWorks = true;
  nav.onLine = true;
  sessionStorage.clear();
  localStorage.clear();
});

test("play, pause, resume, seek, end and heartbeats become events with positions", async () => {
  const v = new FakeMedia();
  const t = attach(v, { heartbeatSeconds: 0.02 });
  await tick();
  v.fire("play");
  v.currentTime = 3.04;
  await tick(70);
  v.fire("pause");
  v.fire("play");
  v.currentTime = 40;
  v.fire("seeked");
  v.ended = true;
  v.fire("pause"); // browsers pause before ended: not a pause of the viewer's
  v.fire("ended");
  await t.flush();
  const ev = await sent();
  const types = ev.map((e) => e.type);
  assert.equal(types[0], "play");
  assert.ok(types.filter((x) => x === "heartbeat").length >= 3, types.join());
  assert.deepEqual(types.slice(-4), ["pause", "resume", "heartbeat", "complete"]);
  assert.equal(ev.find((e) => e.type === "heartbeat").position_s, 3);
  assert.equal(ev.at(-1).position_s, 40);
  assert.equal(new Set(ev.map((e) => e.event_id)).size, ev.length, "a fresh id per event");
  assert.ok(ev.every((e) => e.session_id === ev[0].session_id && e.video_id === "v1" && e.token === "tok"));
  assert.ok(beacons.every((b) => b.url === "http://edge.test/v1/events" && b.blob.type === "text/plain"));
});

test("a reload inside the session keeps its id; 30 minutes idle make a new one", async () => {
  const a = attach(new FakeMedia()).session;
  const b = attach(new FakeMedia()).session; // the page reloaded: same tab storage
  assert.equal(a, b);
  const realNow = Date.now;
  try {
    Date.now = () => realNow() + 31 * 60 * 1000;
    assert.notEqual(Tally.sessionId(), a);
  } finally {
    Date.now = realNow;
  }
});

test("the token is minted for the SDK's session id", async () => {
  let asked;
  const v = new FakeMedia();
  const t = attach(v, { token: async (sid) => { asked = sid; return "jwt-for-" + sid; } });
  await tick();
  v.fire("play");
  await t.flush();
  const [e] = await sent();
  assert.equal(asked, t.session);
  assert.equal(e.token, "jwt-for-" + t.session);
});

test("after 30 idle minutes the tracker moves to a new session with a token for it", async () => {
  const asked = [];
  const v = new FakeMedia();
  const t = attach(v, { token: async (sid) => { asked.push(sid); return "jwt-for-" + sid; } });
  await tick();
  v.fire("play");
  await t.flush();
  const realNow = Date.now;
  try {
    Date.now = () => realNow() + 31 * 60 * 1000;
    v.fire("pause");
    v.fire("play");
    await tick(20);
    await t.flush();
  } finally {
    Date.now = realNow;
  }
  const ev = await sent();
  assert.equal(asked.length, 2);
  assert.notEqual(asked[0], asked[1]);
  const first = ev.filter((e) => e.session_id === asked[0]);
  const second = ev.filter((e) => e.session_id === asked[1]);
  assert.deepEqual(first.map((e) => e.type), ["play"]);
  assert.ok(first.every((e) => e.token === "jwt-for-" + asked[0]));
  assert.ok(second.length >= 1 && second.every((e) => e.token === "jwt-for-" + asked[1]), JSON.stringify(second));
});

test("without sendBeacon it falls back to fetch with keepalive", async () => {
  beaconWorks = false;
  const v = new FakeMedia();
  const t = attach(v);
  await tick();
  v.fire("play");
  assert.equal(await t.flush(), true);
  assert.equal(fetches.length, 1);
  assert.equal(fetches[0].init.keepalive, true);
  assert.equal(fetches[0].init.headers["content-type"], "text/plain");
});

test("offline events wait in localStorage, bounded, and go with their times when back online", async () => {
  const v = new FakeMedia();
  const t = attach(v);
  await tick();
  nav.onLine = false;
  v.fire("play");
  const at = Date.now();
  assert.equal(await t.flush(), false);
  assert.equal(beacons.length + fetches.length, 0);
  const queued = JSON.parse(localStorage.getItem("tally:queue"));
  assert.equal(queued.length, 1);
  assert.ok(Math.abs(queued[0].ts - at) < 1000);
  for (let i = 0; i < 600; i++) t.track("heartbeat");
  await t.flush();
  assert.equal(JSON.parse(localStorage.getItem("tally:queue")).length, 500, "bounded");
  nav.onLine = true;
  dispatchEvent(new Event("online"));
  await tick(20);
  const ev = await sent();
  assert.equal(ev.length, 500);
  assert.equal(localStorage.getItem("tally:queue"), null);
  // a failed delivery goes back to the queue
  beaconWorks = false;
  fetchAnswer = () => { throw new TypeError("network down"); };
  t.track("like");
  assert.equal(await t.flush(), false);
  assert.equal(JSON.parse(localStorage.getItem("tally:queue")).length, 1);
  fetchAnswer = () => new Response("{}", { status: 202 });
});

test("debug mode reports the edge's per-event rejections", async () => {
  const warned = [];
  const warn = console.warn;
  console.warn = (...a) => warned.push(a.join(" "));
  fetchAnswer = () => new Response(JSON.stringify({ accepted: 0, rejected: [{ index: 0, reason: "token expired" }], error: "no event of the beacon was accepted" }), { status: 400 });
  try {
    const v = new FakeMedia();
    const t = attach(v, { debug: true });
    await tick();
    v.fire("play");
    await t.flush();
    await tick(20);
    assert.equal(beacons.length, 0, "debug reads answers, so it uses fetch");
    assert.ok(warned.some((w) => w.includes("token expired")), warned.join("\n"));
  } finally {
    console.warn = warn;
    fetchAnswer = () => new Response("{}", { status: 202 });
  }
});

test("leaving the page sends a leave event at once", async () => {
  const v = new FakeMedia();
  const t = attach(v);
  await tick();
  v.fire("play");
  document.visibilityState = "hidden";
  document.dispatchEvent(new Event("visibilitychange"));
  document.visibilityState = "visible";
  await tick(20);
  const types = (await sent()).map((e) => e.type);
  assert.deepEqual(types, ["play", "leave"]);
});

test("it adds no more than a few KB gzipped", () => {
  const src = readFileSync(new URL("../tally.js", import.meta.url));
  const gz = gzipSync(src).length;
  assert.ok(gz < 5 * 1024, `${gz} bytes gzipped`);
  console.log(`tally.js: ${src.length} bytes, ${gz} gzipped`);
});

test("a session the platform chose on its server is used as given, with its token", async () => {
  const before = Tally.sessionId();
  const media = new FakeMedia();
  const t = attach(media, { sessionId: "srv-sid-9", token: "token-for-srv-sid-9" });
  media.fire("play");
  t.like();
  await t.flush();
  await tick();
  const events = await sent();
  assert.ok(events.length >= 2, JSON.stringify(events));
  for (const e of events) {
    assert.equal(e.session_id, "srv-sid-9");
    assert.equal(e.token, "token-for-srv-sid-9");
  }
  assert.equal(Tally.sessionId(), before, "the tab's own session is left alone");
  await t.detach();
  trackers = trackers.filter((x) => x !== t);
});
