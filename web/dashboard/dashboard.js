// The creator dashboard: reads only the merger's public HTTP API (analytics with an API
// key kept in this browser, live counts by SSE). No build step, no dependency but uPlot.
(function () {
  "use strict";

  var DIMS = [
    ["country", "Countries"],
    ["device", "Devices"],
    ["source", "Sources"],
    ["video", "Top videos"],
    ["channel", "Channels"],
    ["category", "Categories"],
    ["pop", "POPs"],
  ];
  var PAGE = 10;
  var state = { range: "24h", from: null, to: null, filters: [], pages: {} };
  var chart = null;
  var liveCharts = {};
  var feeds = {};

  var $ = function (sel) {
    return document.querySelector(sel);
  };
  var fmt = new Intl.NumberFormat();
  function dur(s) {
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return fmt.format(Math.floor(s / 3600)) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  // The key: from the URL fragment (#key=...), else this browser's storage, else asked for.
  var m = /[#&]key=([^&]+)/.exec(location.hash);
  if (m) {
    localStorage.setItem("tally:key", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  function key() {
    return localStorage.getItem("tally:key") || "";
  }

  function params(extra) {
    var p = new URLSearchParams();
    if (state.from) {
      p.set("from", state.from);
      p.set("to", state.to);
    } else p.set("date_range", state.range);
    state.filters.forEach(function (f) {
      var cur = p.get(f[0]);
      // two values of one dimension: either of them (in)
      p.set(f[0], cur ? cur + "," + f[1] : f[1]);
    });
    Object.keys(extra || {}).forEach(function (k) {
      p.set(k, extra[k]);
    });
    return p.toString();
  }

  function api(path, extra, raw) {
    return fetch(path + "?" + params(extra), { headers: { authorization: "Bearer " + key() } }).then(function (r) {
      if (r.status === 401) {
        $("#keybar").hidden = false;
        throw new Error("an API key is needed: paste one above");
      }
      if (!r.ok)
        return r.json().then(function (j) {
          throw new Error(j.error || r.statusText);
        });
      return raw ? r.text() : r.json();
    });
  }

  function status(msg, error) {
    var s = $("#status");
    s.textContent = msg || "";
    s.className = error ? "error" : "";
  }

  function change(now, before) {
    if (before === null || before === undefined) return ["", ""];
    if (before === 0) return [now > 0 ? "new" : "±0", now > 0 ? "up" : ""];
    var pct = ((now - before) / before) * 100;
    return [(pct >= 0 ? "+" : "") + pct.toFixed(0) + "% vs previous", pct >= 0 ? "up" : "down"];
  }

  function kpi(id, value, shown, before) {
    var el = document.getElementById(id);
    el.dataset.value = value === null ? "" : String(value);
    el.querySelector("b").textContent = shown;
    var c = change(value, before);
    var small = el.querySelector("small");
    small.textContent = c[0];
    small.className = c[1];
  }

  function loadTotals() {
    return api("/v1/analytics/aggregate", { compare: "previous" }).then(function (a) {
      var p = a.previous || {};
      kpi("kpi-views", a.views, fmt.format(a.views), p.views);
      kpi("kpi-uniques", a.uniques, a.uniques === null ? "n/a" : fmt.format(a.uniques), p.uniques);
      kpi("kpi-watch", a.watch_time_s, dur(a.watch_time_s), p.watch_time_s);
      kpi("kpi-avg", a.avg_view_duration_s, dur(a.avg_view_duration_s), p.avg_view_duration_s);
      kpi("kpi-likes", a.likes, fmt.format(a.likes), p.likes);
      kpi("kpi-shares", a.shares, fmt.format(a.shares), p.shares);
      kpi("kpi-comments", a.comments, fmt.format(a.comments), p.comments);
    });
  }

  function loadChart() {
    return api("/v1/analytics/timeseries", { compare: "previous" }).then(function (t) {
      var xs = t.points.map(function (p) {
        return p.key / 1000;
      });
      var ys = t.points.map(function (p) {
        return p.views;
      });
      // the previous period's points, shifted onto this period's axis
      var shift = (t.to - t.from) / 1000;
      var prev = {};
      ((t.previous && t.previous.points) || []).forEach(function (p) {
        prev[p.key / 1000 + shift] = p.views;
      });
      Object.keys(prev).forEach(function (x) {
        if (xs.indexOf(+x) < 0) {
          xs.push(+x);
          ys.push(null);
        }
      });
      var order = xs.map(function (x, i) {
        return [x, ys[i]];
      });
      order.sort(function (a, b) {
        return a[0] - b[0];
      });
      var data = [
        order.map(function (o) {
          return o[0];
        }),
        order.map(function (o) {
          return o[1];
        }),
        order.map(function (o) {
          return prev[o[0]] === undefined ? null : prev[o[0]];
        }),
      ];
      var el = $("#chart");
      var width = Math.max(280, el.clientWidth || 600);
      if (chart) chart.destroy();
      chart = new uPlot(
        {
          width: width,
          height: 220,
          scales: {
            x: {
              time: true,
              range: function () {
                return [t.from / 1000, t.to / 1000];
              },
            },
          },
          series: [
            {},
            { label: "views", stroke: "#2563eb", fill: "rgba(37,99,235,.08)", spanGaps: true },
            { label: "previous", stroke: "#94a3b8", dash: [6, 4], spanGaps: true },
          ],
          axes: [{}, { size: 50 }],
        },
        data,
        el
      );
    });
  }

  function table(dim, title) {
    var id = "t-" + dim;
    var card = document.getElementById(id);
    if (!card) {
      card = document.createElement("div");
      card.className = "card";
      card.id = id;
      card.innerHTML =
        "<header><h2></h2><button class=csv>CSV</button></header><table><thead><tr><th></th><th>Views</th><th>Watch</th><th>Likes</th><th title='vs previous period'>±</th></tr></thead><tbody></tbody></table><div class=pager><button class=prev>‹</button><span class=page></span><button class=next>›</button></div>";
      card.querySelector("h2").textContent = title;
      card.querySelector("th").textContent = dim;
      card.querySelector(".csv").onclick = function () {
        api("/v1/analytics/breakdown", { by: dim, limit: 1000, format: "csv" }, true).then(function (text) {
          var a = document.createElement("a");
          a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
          a.download = "tally-" + dim + ".csv";
          a.click();
        });
      };
      card.querySelector(".prev").onclick = function () {
        state.pages[dim] = Math.max(1, (state.pages[dim] || 1) - 1);
        table(dim, title);
      };
      card.querySelector(".next").onclick = function () {
        state.pages[dim] = (state.pages[dim] || 1) + 1;
        table(dim, title);
      };
      $("#tables").appendChild(card);
    }
    var page = state.pages[dim] || 1;
    return api("/v1/analytics/breakdown", { by: dim, limit: PAGE, page: page, compare: "previous" }).then(function (b) {
      var before = {};
      ((b.previous && b.previous.rows) || []).forEach(function (r) {
        before[r.key] = r.views;
      });
      var top = b.rows.length ? b.rows[0].views : 1;
      var body = card.querySelector("tbody");
      body.innerHTML = "";
      b.rows.forEach(function (r) {
        var tr = document.createElement("tr");
        tr.dataset.key = r.key;
        var name = document.createElement("td");
        var bar = document.createElement("span");
        bar.className = "bar";
        bar.style.width = Math.max(2, (40 * r.views) / Math.max(1, top)) + "px";
        name.appendChild(bar);
        name.appendChild(document.createTextNode(r.key));
        tr.appendChild(name);
        var c = change(r.views, before[r.key] === undefined ? 0 : before[r.key]);
        [fmt.format(r.views), dur(r.watch_time_s), fmt.format(r.likes), c[0].replace(" vs previous", "")].forEach(function (v) {
          var td = document.createElement("td");
          td.textContent = v;
          tr.appendChild(td);
        });
        tr.onclick = function () {
          addFilter(dim, r.key);
        };
        body.appendChild(tr);
      });
      card.querySelector(".page").textContent = "page " + page;
      card.querySelector(".prev").disabled = page <= 1;
      card.querySelector(".next").disabled = !b.more;
    });
  }

  // The countries' choropleth: the map is fetched once, then coloured by views.
  var worldMap = null;
  function loadMap() {
    var box = document.getElementById("map");
    if (!box) return Promise.resolve();
    var map = worldMap
      ? Promise.resolve(worldMap)
      : fetch("/dashboard/vendor/world-map.json")
          .then(function (r) {
            return r.json();
          })
          .then(function (m) {
            worldMap = m;
            var ns = "http://www.w3.org/2000/svg";
            var svg = document.createElementNS(ns, "svg");
            svg.setAttribute("viewBox", m.viewBox);
            svg.setAttribute("role", "img");
            svg.setAttribute("aria-label", "Views by country");
            m.locations.forEach(function (l) {
              var p = document.createElementNS(ns, "path");
              p.setAttribute("d", l.path);
              p.dataset.country = l.id.toUpperCase();
              p.dataset.name = l.name;
              p.appendChild(document.createElementNS(ns, "title"));
              p.onclick = function () {
                if (p.dataset.views) addFilter("country", p.dataset.country);
              };
              svg.appendChild(p);
            });
            box.appendChild(svg);
            return m;
          });
    return map.then(function () {
      return api("/v1/analytics/breakdown", { by: "country", limit: 300 }).then(function (b) {
        var views = {};
        var top = 1;
        b.rows.forEach(function (r) {
          views[r.key] = r.views;
          top = Math.max(top, r.views);
        });
        Array.prototype.forEach.call(box.querySelectorAll("path"), function (p) {
          var v = views[p.dataset.country] || 0;
          p.dataset.views = v ? String(v) : "";
          // log scale: a long tail of small countries stays visible beside the largest
          var t = v ? Math.log(1 + v) / Math.log(1 + top) : 0;
          p.style.fill = v ? "rgba(37,99,235," + (0.15 + 0.85 * t).toFixed(3) + ")" : "";
          p.querySelector("title").textContent = p.dataset.name + ": " + fmt.format(v) + " views";
        });
      });
    });
  }

  function addFilter(dim, value) {
    if (
      !state.filters.some(function (f) {
        return f[0] === dim && f[1] === value;
      })
    )
      state.filters.push([dim, value]);
    state.pages = {};
    refresh();
  }

  function drawFilters() {
    var box = $("#filters");
    box.innerHTML = "";
    state.filters.forEach(function (f, i) {
      var chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = f[0] + ": " + f[1];
      chip.title = "remove";
      chip.onclick = function () {
        state.filters.splice(i, 1);
        refresh();
      };
      box.appendChild(chip);
    });
  }

  function liveStream(name, points) {
    var id = "live-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
    var box = document.getElementById(id);
    if (!box) {
      box = document.createElement("div");
      box.id = id;
      box.innerHTML = "<h2></h2><b class=now></b><div class=plot></div>";
      box.querySelector("h2").textContent = name;
      $("#live").appendChild(box);
    }
    var data = [
      points.map(function (p) {
        return p.minute / 1000;
      }),
      points.map(function (p) {
        return p.watching;
      }),
    ];
    if (liveCharts[name]) liveCharts[name].destroy();
    liveCharts[name] = new uPlot(
      {
        width: Math.max(260, $("#live").clientWidth || 600),
        height: 140,
        // the last hour, whatever the points: a range of a few seconds (a stream just
        // started) would make the time axis draw thousands of ticks on every update
        scales: {
          x: {
            time: true,
            range: function () {
              var now = Date.now() / 1000;
              return [now - 3600, now + 60];
            },
          },
        },
        series: [{}, { label: "watching", stroke: "#15803d", fill: "rgba(21,128,61,.08)" }],
        axes: [{}, { size: 40 }],
      },
      data,
      box.querySelector(".plot")
    );
    if (!feeds[name] && window.EventSource) {
      // live updates: one event a second at most, shared by every viewer of the stream
      var es = new EventSource("/v1/live/" + encodeURIComponent(name) + "/events");
      // the merger names its events `live`
      es.addEventListener("live", function (ev) {
        try {
          var g = JSON.parse(ev.data);
          box.querySelector(".now").textContent = fmt.format(g.watching) + " watching now";
          box.dataset.watching = g.watching;
          var u = liveCharts[name];
          var t = Math.floor(Date.now() / 60000) * 60;
          var xs = u.data[0].slice();
          var ys = u.data[1].slice();
          if (xs.length && xs[xs.length - 1] === t) ys[ys.length - 1] = Math.max(ys[ys.length - 1], g.watching);
          else {
            xs.push(t);
            ys.push(g.watching);
          }
          u.setData([xs, ys]);
        } catch (e) {
          /* not a gauge */
        }
      });
      feeds[name] = es;
    }
  }

  function loadLive() {
    return fetch("/v1/analytics/concurrent?" + new URLSearchParams({ from: Date.now() - 3600000 }), {
      headers: { authorization: "Bearer " + key() },
    })
      .then(function (r) {
        return r.ok ? r.json() : { streams: [] };
      })
      .then(function (c) {
        if (!c.streams.length) $("#live").textContent = "No live stream in the last hour.";
        else if ($("#live").firstChild && $("#live").firstChild.nodeType === 3) $("#live").textContent = "";
        c.streams.forEach(function (s) {
          liveStream(s.stream, s.points);
        });
      });
  }

  function refresh() {
    drawFilters();
    status("Loading…");
    var jobs = [loadTotals(), loadChart(), loadLive(), loadMap()].concat(
      DIMS.map(function (d) {
        return table(d[0], d[1]);
      })
    );
    return Promise.all(jobs).then(
      function () {
        status("");
        document.body.dataset.loaded = String(Date.now());
      },
      function (e) {
        status(e.message, true);
      }
    );
  }

  Array.prototype.forEach.call(document.querySelectorAll("#periods button[data-range]"), function (b) {
    b.onclick = function () {
      Array.prototype.forEach.call(document.querySelectorAll("#periods button"), function (x) {
        x.classList.remove("on");
      });
      b.classList.add("on");
      state.range = b.dataset.range;
      state.from = state.to = null;
      state.pages = {};
      refresh();
    };
  });
  $("#custom").onclick = function () {
    var f = $("#from").value;
    var t = $("#to").value;
    if (!f || !t) return status("pick both dates", true);
    // the last day counts whole: up to the midnight after it
    var end = new Date(t + "T00:00:00Z");
    end.setUTCDate(end.getUTCDate() + 1);
    state.from = f;
    state.to = end.toISOString().slice(0, 10);
    state.pages = {};
    refresh();
  };
  $("#keyform").onsubmit = function (e) {
    e.preventDefault();
    localStorage.setItem("tally:key", $("#key").value.trim());
    $("#keybar").hidden = true;
    refresh();
  };
  if (!key()) $("#keybar").hidden = false;
  refresh();
  setInterval(function () {
    if (!document.hidden && state.range === "60m") refresh();
  }, 30000);
})();
