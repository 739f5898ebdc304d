/*! tally.js: the Tally player SDK. Apache-2.0. No dependencies.
 *
 * Script tag:  <script src="https://edge.example/tally.js"></script>  then  Tally.attach(...)
 * ES module:   import Tally from "https://edge.example/tally.mjs";
 *
 *   const t = Tally.attach(document.querySelector("video"), {
 *     endpoint: "https://edge.example",          // the Tally edge (agent or Spin app)
 *     videoId: "v42",
 *     token: (sessionId) => fetch("/playback-token?sid=" + sessionId).then(r => r.text()),
 *   });
 *   t.like();  t.share();  t.comment();  t.detach();
 *
 * The SDK owns the view identity: one session id per tab (sessionStorage), rotated after
 * 30 minutes without events, so a reload inside the session is the same view; a fresh
 * event id per event; the platform's token is minted for that session id (its `sid`).
 *
 * Or the platform chooses the session on its server, mints the token for it when it
 * renders the page (signed-in viewers' tokens carry their `uid`), and passes both:
 *
 *   Tally.attach(video, { endpoint, videoId: "v42", sessionId: "<sid>", token: "<token>" });
 *
 * Likes, shares and comments belong to the token's `uid` (else its `sid`); `userId` is
 * sent for compatibility and counts for nothing.
 */
(function (root) {
  "use strict";

  var SESSION_KEY = "tally:session";
  var QUEUE_KEY = "tally:queue";
  var ROTATE_MS = 30 * 60 * 1000;
  var MAX_QUEUE = 500;
  var MAX_BATCH = 50;

  function now() {
    return Date.now();
  }

  function randomId() {
    var c = root.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    var b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    var s = "";
    for (var j = 0; j < 16; j++) s += (b[j] + 256).toString(16).slice(1);
    return s;
  }

  function store(kind) {
    try {
      var s = root[kind];
      if (s) {
        s.getItem("tally:probe");
        return s;
      }
    } catch (e) {
      /* storage disabled: memory only */
    }
    var mem = {};
    return {
      getItem: function (k) {
        return Object.prototype.hasOwnProperty.call(mem, k) ? mem[k] : null;
      },
      setItem: function (k, v) {
        mem[k] = String(v);
      },
      removeItem: function (k) {
        delete mem[k];
      },
    };
  }

  /** The tab's session id: kept in sessionStorage, a new one after 30 min without events. */
  function sessionId(at) {
    var s = store("sessionStorage");
    var t = at === undefined ? now() : at;
    var cur = null;
    try {
      cur = JSON.parse(s.getItem(SESSION_KEY) || "null");
    } catch (e) {
      cur = null;
    }
    if (!cur || typeof cur.id !== "string" || t - cur.last > ROTATE_MS) {
      cur = { id: randomId(), last: t };
    }
    cur.last = Math.max(cur.last, t);
    s.setItem(SESSION_KEY, JSON.stringify(cur));
    return cur.id;
  }

  function readQueue() {
    try {
      var q = JSON.parse(store("localStorage").getItem(QUEUE_KEY) || "[]");
      return Array.isArray(q) ? q : [];
    } catch (e) {
      return [];
    }
  }

  function writeQueue(q) {
    var ls = store("localStorage");
    if (q.length === 0) ls.removeItem(QUEUE_KEY);
    // bounded: the oldest events go first when a phone stays offline for long
    else ls.setItem(QUEUE_KEY, JSON.stringify(q.slice(-MAX_QUEUE)));
  }

  /** Posts a batch; resolves to true when the edge took it (or refused it for good). */
  function post(endpoint, events, opts) {
    var url = endpoint.replace(/\/$/, "") + "/v1/events";
    var body = JSON.stringify({ events: events });
    var nav = root.navigator || {};
    if (!opts.debug && !opts.sync && nav.sendBeacon && nav.onLine !== false) {
      // text/plain: no CORS preflight, and the browser sends it even as the page goes
      if (nav.sendBeacon(url, new root.Blob([body], { type: "text/plain" }))) return Promise.resolve(true);
    }
    if (!root.fetch) return Promise.resolve(false);
    return root
      .fetch(url, { method: "POST", body: body, keepalive: true, headers: { "content-type": "text/plain" } })
      .then(function (r) {
        if (opts.debug) {
          r.json()
            .then(function (j) {
              (j.rejected || []).forEach(function (x) {
                root.console.warn("tally: event refused:", x.reason, events[x.index]);
              });
              if (j.error) root.console.warn("tally:", r.status, j.error);
            })
            .catch(function () {});
        }
        // 4xx other than 429: resending would be refused again
        return r.status < 500 && r.status !== 429;
      })
      .catch(function () {
        return false;
      });
  }

  function Tracker(media, opts) {
    if (!opts || !opts.endpoint || !opts.videoId) throw new Error("tally: attach needs endpoint and videoId");
    this.media = media;
    this.opts = opts;
    this.session = opts.sessionId || sessionId();
    this.pending = [];
    this.started = false;
    this.paused = false;
    this.heartbeatMs = (opts.heartbeatSeconds || 10) * 1000;
    this.timer = null;
    this.listeners = [];
    var self = this;
    this.fetchToken();
    var on = function (target, ev, fn) {
      if (!target || !target.addEventListener) return;
      target.addEventListener(ev, fn);
      self.listeners.push([target, ev, fn]);
    };
    on(media, "play", function () {
      if (!self.started) {
        self.started = true;
        self.track("play");
      } else if (self.paused) {
        self.track("resume");
      }
      self.paused = false;
      self.startBeats();
    });
    on(media, "pause", function () {
      if (media.ended) return;
      self.paused = true;
      self.track("pause");
      self.stopBeats();
    });
    on(media, "seeked", function () {
      if (self.started) self.track("heartbeat");
    });
    on(media, "ended", function () {
      self.track("complete");
      self.stopBeats();
      self.flush();
    });
    var doc = root.document;
    on(root, "pagehide", function () {
      self.leave();
    });
    on(doc, "visibilitychange", function () {
      if (doc.visibilityState === "hidden") self.leave();
    });
    on(root, "online", function () {
      self.flush();
    });
    this.flushTimer = root.setInterval(function () {
      self.flush();
    }, opts.flushSeconds ? opts.flushSeconds * 1000 : 5000);
  }

  /** Gets the token for the current session (a function is called with its id). */
  Tracker.prototype.fetchToken = function () {
    var self = this;
    var tok = this.opts.token;
    var session = this.session;
    this.tokenText = undefined;
    Promise.resolve(typeof tok === "function" ? tok(session) : tok === undefined ? "" : tok).then(function (t) {
      if (self.session !== session) return; // rotated again meanwhile
      self.tokenText = String(t);
      self.flush();
    });
  };

  Tracker.prototype.position = function () {
    var p = this.media && typeof this.media.currentTime === "number" ? this.media.currentTime : 0;
    return Math.round(p * 10) / 10;
  };

  /** Queues one event of `type` now, with the current playback position. */
  Tracker.prototype.track = function (type) {
    var at = now();
    var sid = this.opts.sessionId || sessionId(at); // keeps the session alive
    if (sid !== this.session) {
      // 30 idle minutes: a new session, so a new view, with a token for its id; what was
      // queued goes first with the old session's token
      this.flush();
      this.session = sid;
      this.started = type === "play";
      this.fetchToken();
    }
    var e = {
      event_id: randomId(),
      session_id: this.session,
      video_id: this.opts.videoId,
      type: type,
      ts: at,
      position_s: this.position(),
    };
    if (this.opts.userId) e.user_id = this.opts.userId;
    if (this.opts.device) e.device = this.opts.device;
    if (this.opts.source) e.source = this.opts.source;
    this.pending.push(e);
    if (this.pending.length >= MAX_BATCH) this.flush();
    return e;
  };

  Tracker.prototype.startBeats = function () {
    var self = this;
    if (this.timer) return;
    this.timer = root.setInterval(function () {
      self.track("heartbeat");
    }, this.heartbeatMs);
  };

  Tracker.prototype.stopBeats = function () {
    if (this.timer) root.clearInterval(this.timer);
    this.timer = null;
  };

  /** The page goes away: a leave event, and everything sent while the browser lets us. */
  Tracker.prototype.leave = function () {
    if (this.started && !this.left) {
      this.left = true;
      this.track("leave");
    }
    this.stopBeats();
    this.flush(true);
  };

  /** Sends what is queued (this tab's events and any offline backlog, original times kept). */
  Tracker.prototype.flush = function (sync) {
    var self = this;
    if (this.tokenText === undefined) return Promise.resolve(false);
    var fresh = this.pending.splice(0, this.pending.length);
    for (var i = 0; i < fresh.length; i++) fresh[i].token = this.tokenText;
    var all = readQueue().concat(fresh);
    if (all.length === 0) return Promise.resolve(true);
    writeQueue([]);
    var nav = root.navigator || {};
    if (nav.onLine === false) {
      writeQueue(all);
      return Promise.resolve(false);
    }
    var batches = [];
    for (var j = 0; j < all.length; j += MAX_BATCH) batches.push(all.slice(j, j + MAX_BATCH));
    return Promise.all(
      batches.map(function (b) {
        return post(self.opts.endpoint, b, { debug: self.opts.debug, sync: sync }).then(function (ok) {
          if (!ok) writeQueue(readQueue().concat(b));
          return ok;
        });
      })
    ).then(function (oks) {
      return oks.every(Boolean);
    });
  };

  Tracker.prototype.like = function () {
    return this.track("like");
  };
  Tracker.prototype.unlike = function () {
    return this.track("unlike");
  };
  Tracker.prototype.share = function () {
    return this.track("share");
  };
  Tracker.prototype.comment = function () {
    return this.track("comment");
  };

  /** Stops listening (queued events are sent first). */
  Tracker.prototype.detach = function () {
    this.stopBeats();
    root.clearInterval(this.flushTimer);
    this.listeners.forEach(function (l) {
      l[0].removeEventListener(l[1], l[2]);
    });
    this.listeners = [];
    return this.flush();
  };

  var Tally = {
    version: "0.1.0",
    /** Follows a media element (an HTMLMediaElement, or any with its events and currentTime). */
    attach: function (media, opts) {
      return new Tracker(media, opts);
    },
    sessionId: function () {
      return sessionId();
    },
  };

  // <tally-live stream="live-1" endpoint="https://edge.example">: concurrent viewers, by SSE.
  // <tally-views video="v42" endpoint="https://edge.example">: a video's public view count.
  if (root.customElements && root.HTMLElement && !root.customElements.get("tally-live")) {
    var show = function (el, attr, n) {
      el.setAttribute(attr, n);
      el.textContent = typeof n === "number" && root.Intl ? new root.Intl.NumberFormat().format(n) : String(n);
    };
    /** Defines <name>: `connect(el, url)` runs when it is added, with the edge URL of `path(id)`. */
    var element = function (name, idAttr, path, connect, disconnect) {
      var El = function () {
        return Reflect.construct(root.HTMLElement, [], El);
      };
      El.prototype = Object.create(root.HTMLElement.prototype);
      El.prototype.connectedCallback = function () {
        var base = (this.getAttribute("endpoint") || "").replace(/\/$/, "");
        connect(this, base + path(encodeURIComponent(this.getAttribute(idAttr) || "")));
      };
      El.prototype.disconnectedCallback = function () {
        if (disconnect) disconnect(this);
      };
      Object.setPrototypeOf(El, root.HTMLElement);
      root.customElements.define(name, El);
    };
    element(
      "tally-live",
      "stream",
      function (id) {
        return "/v1/live/" + id + "/events";
      },
      function (el, url) {
        el.source = new root.EventSource(url);
        // the edges name their events `live`
        el.source.addEventListener("live", function (m) {
          try {
            show(el, "watching", JSON.parse(m.data).watching);
          } catch (e) {
            /* not a gauge */
          }
        });
      },
      function (el) {
        if (el.source) el.source.close();
      }
    );
    element(
      "tally-views",
      "video",
      function (id) {
        return "/v1/videos/" + id + "/stats";
      },
      function (el, url) {
        root
          .fetch(url)
          .then(function (r) {
            return r.status === 404 ? { views: 0 } : r.json();
          })
          .then(function (j) {
            show(el, "views", j.views);
          })
          .catch(function () {});
      }
    );
  }

  root.Tally = Tally;
})(typeof globalThis !== "undefined" ? globalThis : this);
