// fitserve dashboard. Job page: draws the learning curves and per-layer gradient norms as inline
// SVG from the rows embedded in the page, then follows the job's event stream and redraws.
// Compare page: overlays the curves of the picked jobs, one colour a job, validation dashed.
(function () {
  "use strict";
  var TERMINAL = ["succeeded", "failed", "cancelled"];
  var SVGNS = "http://www.w3.org/2000/svg";
  // Colours of the matplotlib/Tableau palette: loss blue, val_loss orange, metric green/red.
  var LAYER_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
                       "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
  var W = 640, H = 260, L = 60, R = 16, T = 14, B = 34;

  function node(name, attrs, text) {
    var n = document.createElementNS(SVGNS, name);
    for (var k in attrs) n.setAttribute(k, attrs[k]);
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function ticks(lo, hi, count) {
    var out = [];
    for (var i = 0; i <= count; i++) out.push(lo + (hi - lo) * i / count);
    return out;
  }

  function label(v, logY) {
    if (logY) return Math.pow(10, v).toExponential(1);
    var a = Math.abs(v);
    return (a !== 0 && (a < 0.01 || a >= 10000)) ? v.toExponential(1) : String(+v.toPrecision(3));
  }

  // series: [{name, colour, points: [[epoch, value], ...]}]; logY draws log10(value).
  function draw(svg, series, logY) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.appendChild(node("rect", {x: L, y: T, width: W - L - R, height: H - T - B,
                                  fill: "#fff", stroke: "#bbb"}));
    var ty = function (v) { return logY ? Math.log10(v) : v; };
    var ok = function (p) { return typeof p[1] === "number" && isFinite(p[1]) && (!logY || p[1] > 0); };
    series = series.map(function (s) {
      return {name: s.name, colour: s.colour, dash: s.dash, points: s.points.filter(ok)};
    }).filter(function (s) { return s.points.length > 0; });
    if (series.length === 0) {
      svg.appendChild(node("text", {x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#888"},
                           "waiting for the first epoch"));
      return;
    }
    var all = [].concat.apply([], series.map(function (s) { return s.points; }));
    var x0 = Math.min.apply(null, all.map(function (p) { return p[0]; }));
    var x1 = Math.max.apply(null, all.map(function (p) { return p[0]; }));
    if (x1 === x0) { x1 = x0 + 1; }
    var ys = all.map(function (p) { return ty(p[1]); });
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    var pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    var sx = function (x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
    var sy = function (y) { return T + (1 - (ty(y) - y0) / (y1 - y0)) * (H - T - B); };
    ticks(y0, y1, 4).forEach(function (v) {
      var y = T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
      svg.appendChild(node("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#eee"}));
      svg.appendChild(node("text", {x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11,
                                    fill: "#555"}, label(v, logY)));
    });
    ticks(x0, x1, Math.min(5, x1 - x0)).forEach(function (v) {
      svg.appendChild(node("text", {x: sx(v), y: H - B + 16, "text-anchor": "middle",
                                    "font-size": 11, fill: "#555"}, String(Math.round(v))));
    });
    svg.appendChild(node("text", {x: L + (W - L - R) / 2, y: H - 4, "text-anchor": "middle",
                                  "font-size": 11, fill: "#555"}, "epoch"));
    series.forEach(function (s) {
      var pts = s.points.map(function (p) { return sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); });
      if (pts.length === 1) {
        var xy = pts[0].split(",");
        svg.appendChild(node("circle", {cx: xy[0], cy: xy[1], r: 4, fill: s.colour, "class": "curve",
                                        "data-series": s.name}));
      } else {
        var line = node("polyline", {points: pts.join(" "), fill: "none", stroke: s.colour,
                                     "stroke-width": 3, "stroke-linejoin": "round",
                                     "class": "curve", "data-series": s.name});
        if (s.dash) line.setAttribute("stroke-dasharray", "7 4");
        svg.appendChild(line);
      }
    });
    // The legend on a translucent card, so it never hides a curve's shape.
    svg.appendChild(node("rect", {x: W - R - 158, y: T + 2, width: 152, height: series.length * 16 + 8,
                                  fill: "#fff", "fill-opacity": 0.85, stroke: "#ddd"}));
    series.forEach(function (s, i) {
      svg.appendChild(node("line", {x1: W - R - 150, x2: W - R - 136, y1: T + 12 + i * 16,
                                    y2: T + 12 + i * 16, stroke: s.colour, "stroke-width": 4,
                                    "stroke-dasharray": s.dash ? "4 2" : "none"}));
      svg.appendChild(node("text", {x: W - R - 132, y: T + 16 + i * 16, "font-size": 11,
                                    fill: "#333"}, s.name));
    });
  }

  function column(rows, key) {
    return rows.map(function (r) { return [r.epoch, r[key]]; });
  }

  function metricOf(rows) {
    return rows.some(function (r) { return typeof r.mae === "number"; }) ? "mae" : "accuracy";
  }

  // The Server-Sent Events of `url` through fetch, so the request can carry the Authorization
  // header (EventSource can't); reconnects after `last_event_id` like EventSource would.
  function follow(url, after, handlers) {
    var lastId = String(after), stopped = false;
    function dispatch(block) {
      var event = "message", data = [];
      block.split(/\r?\n/).forEach(function (line) {
        if (!line || line.charAt(0) === ":") return;
        var colon = line.indexOf(":");
        var field = colon < 0 ? line : line.slice(0, colon);
        var value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
        else if (field === "id") lastId = value;
      });
      if (data.length && handlers[event]) {
        if (handlers[event](JSON.parse(data.join("\n"))) === false) stopped = true;
      }
    }
    function connect() {
      var headers = window.fitserveAuth.headers({Accept: "text/event-stream"});
      var target = url + "?last_event_id=" + encodeURIComponent(lastId);
      fetch(target, {headers: headers, credentials: "omit", cache: "no-store"})
        .then(function (response) {
          if (!response.ok || !response.body) throw new Error("event stream " + response.status);
          var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
          function pump() {
            return reader.read().then(function (chunk) {
              if (chunk.done) return;
              buffer += decoder.decode(chunk.value, {stream: true});
              var blocks = buffer.split(/\r?\n\r?\n/);
              buffer = blocks.pop();
              blocks.forEach(dispatch);
              if (stopped) { reader.cancel(); return; }
              return pump();
            });
          }
          return pump();
        })
        .then(function () { if (!stopped) window.setTimeout(connect, 1000); },
              function () { if (!stopped) window.setTimeout(connect, 3000); });
    }
    connect();
  }

  var compared = document.getElementById("compared-jobs");
  if (compared) {
    var jobs = JSON.parse(compared.textContent);
    var metric = jobs.some(function (j) { return metricOf(j.rows) === "mae"; }) ? "mae" : "accuracy";
    var overlay = function (key) {
      var series = [];
      jobs.forEach(function (j) {
        series.push({name: j.label + " " + key, colour: j.colour, points: column(j.rows, key)});
        series.push({name: j.label + " val_" + key, colour: j.colour, dash: true,
                     points: column(j.rows, "val_" + key)});
      });
      return series;
    };
    draw(document.getElementById("chart-loss"), overlay("loss"), false);
    draw(document.getElementById("chart-metric"), overlay(metric), false);
    return;
  }

  var page = document.getElementById("job");
  if (!page) return;
  var rows = JSON.parse(document.getElementById("history").textContent);

  function render() {
    draw(document.getElementById("chart-loss"), [
      {name: "loss", colour: "#1f77b4", points: column(rows, "loss")},
      {name: "val_loss", colour: "#ff7f0e", points: column(rows, "val_loss")}
    ], false);
    var metric = metricOf(rows);
    draw(document.getElementById("chart-metric"), [
      {name: metric, colour: "#2ca02c", points: column(rows, metric)},
      {name: "val_" + metric, colour: "#d62728", points: column(rows, "val_" + metric)}
    ], false);
    var layers = [];
    rows.forEach(function (r) {
      Object.keys(r.layer_grad_norms || {}).forEach(function (k) {
        if (layers.indexOf(k) < 0) layers.push(k);
      });
    });
    draw(document.getElementById("chart-grads"), layers.map(function (name, i) {
      return {name: name, colour: LAYER_COLOURS[i % LAYER_COLOURS.length],
              points: rows.map(function (r) { return [r.epoch, (r.layer_grad_norms || {})[name]]; })};
    }), true);
    var last = rows[rows.length - 1];
    document.getElementById("progress").textContent =
      (last ? last.epoch : 0) + " / " + page.dataset.epochs;
  }

  var pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    window.requestAnimationFrame(function () { pending = false; render(); });
  }

  function showStatus(data) {
    var badge = document.getElementById("status");
    badge.textContent = data.status;
    badge.className = "badge " + data.status;
    if (data.model_id) {
      var link = document.getElementById("model");
      link.textContent = data.model_id;
      link.setAttribute("href", page.dataset.models + data.model_id);
    }
    if (data.error) document.getElementById("error").textContent = data.error;
  }

  function add(row) {
    var last = rows[rows.length - 1];
    if (!last || row.epoch > last.epoch) rows.push(row);
  }

  // The epochs after the page's first ones, a page of GET /v1/jobs/{id}/metrics at a time.
  function readPages(after, then) {
    var headers = window.fitserveAuth.headers({Accept: "application/json"});
    var url = page.dataset.metrics + "?limit=1000&after=" + encodeURIComponent(after);
    fetch(url, {headers: headers, credentials: "omit", cache: "no-store"})
      .then(function (response) {
        if (!response.ok) throw new Error("metrics " + response.status);
        return response.json();
      })
      .then(function (body) {
        body.epochs.forEach(add);
        schedule();
        if (body.next_after === null || body.next_after === undefined) then();
        else readPages(body.next_after, then);
      }, function () { window.setTimeout(function () { readPages(after, then); }, 3000); });
  }

  function live() {
    if (TERMINAL.indexOf(page.dataset.status) >= 0) return;
    var last = rows[rows.length - 1];
    follow(page.dataset.events, last ? last.epoch : 0, {
      epoch: function (row) { add(row); schedule(); },
      status: function (data) {
        showStatus(data);
        return TERMINAL.indexOf(data.status) < 0;  // false: the job is over, stop following
      }
    });
  }

  render();
  if (page.dataset.next) readPages(page.dataset.next, live);
  else live();
})();
