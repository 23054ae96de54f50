/* dq dashboard glue: live stream resume, the live indicator, clocks. No framework. */
(function () {
  "use strict";

  // ---- resume: every stream message carries the last event seq as its id. A fresh
  // EventSource (htmx re-creates one after the server went away) asks for what it missed.
  var lastSeq = null;

  function withAfter(url) {
    if (lastSeq === null) return url;
    var u = new URL(url, window.location.href);
    u.searchParams.set("after", lastSeq);
    return u.pathname + u.search;
  }

  htmx.createEventSource = function (url) {
    return new EventSource(withAfter(url), { withCredentials: true });
  };

  // ---- drop out-of-band fragments for elements this page does not show,
  // so a shared stream can carry more than one page needs.
  htmx.defineExtension("dq-live", {
    transformResponse: function (text) {
      var tpl = document.createElement("template");
      tpl.innerHTML = text;
      var root = tpl.content;
      var holders = root.querySelectorAll("template");
      var scopes = [root];
      for (var i = 0; i < holders.length; i++) scopes.push(holders[i].content);
      scopes.forEach(function (scope) {
        scope.querySelectorAll("[hx-swap-oob]").forEach(function (el) {
          var spec = el.getAttribute("hx-swap-oob");
          var sel = spec.indexOf(":") >= 0 ? spec.slice(spec.indexOf(":") + 1) : "#" + el.id;
          if (!sel || sel === "#" || !document.querySelector(sel)) el.remove();
        });
      });
      var out = "";
      for (var j = 0; j < root.childNodes.length; j++) {
        var n = root.childNodes[j];
        if (n.nodeType === 1) out += n.outerHTML;
      }
      return out;
    },
  });

  // ---- live indicator: connected / reconnecting / offline
  var offlineTimer = null;
  function setLive(state) {
    var el = document.getElementById("live");
    if (!el) return;
    el.dataset.state = state;
    var text = el.querySelector(".txt");
    if (text) text.textContent = state === "connected" ? "live" : state;
  }
  document.addEventListener("htmx:sseOpen", function () {
    clearTimeout(offlineTimer);
    offlineTimer = null;
    setLive("connected");
  });
  document.addEventListener("htmx:sseError", function () {
    setLive("reconnecting");
    if (!offlineTimer) {
      offlineTimer = setTimeout(function () { setLive("offline"); }, 8000);
    }
  });
  document.addEventListener("htmx:sseMessage", function (evt) {
    var e = evt.detail;
    if (e && e.lastEventId) {
      var n = parseInt(e.lastEventId, 10);
      if (!isNaN(n)) lastSeq = n;
    }
    tick();
  });
  window.addEventListener("offline", function () { setLive("offline"); });

  // ---- clocks: relative times, running durations, sleep countdowns (server gives ms epochs)
  function fmtDur(ms) {
    if (ms < 0) ms = 0;
    if (ms < 1000) return Math.round(ms) + " ms";
    var s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    var m = Math.floor(s / 60), rs = Math.floor(s % 60);
    if (m < 60) return m + "m " + (rs < 10 ? "0" : "") + rs + "s";
    var h = Math.floor(m / 60), rm = m % 60;
    if (h < 48) return h + "h " + (rm < 10 ? "0" : "") + rm + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }
  function fmtAgo(ms) {
    var s = Math.round(ms / 1000);
    if (s < 5) return "just now";
    if (s < 60) return s + "s ago";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "m ago";
    var h = Math.floor(m / 60);
    if (h < 48) return h + "h ago";
    return Math.floor(h / 24) + "d ago";
  }
  var skew = 0;
  function now() { return Date.now() + skew; }
  function tick() {
    var t = now();
    document.querySelectorAll("[data-ago]").forEach(function (el) {
      el.textContent = fmtAgo(t - parseInt(el.dataset.ago, 10));
    });
    document.querySelectorAll("[data-since]").forEach(function (el) {
      el.textContent = fmtDur(t - parseInt(el.dataset.since, 10));
    });
    document.querySelectorAll("[data-until]").forEach(function (el) {
      var left = parseInt(el.dataset.until, 10) - t;
      el.textContent = left > 0 ? "in " + fmtDur(left) : "waking…";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var body = document.body;
    if (body.dataset.now) skew = parseInt(body.dataset.now, 10) - Date.now();
    tick();
    setInterval(tick, 1000);
    // "/" jumps to the go-to box
    document.addEventListener("keydown", function (e) {
      if (e.key !== "/" || /input|textarea|select/i.test(document.activeElement.tagName)) return;
      var box = document.querySelector(".goto input");
      if (box) { e.preventDefault(); box.focus(); }
    });
  });
  // ---- the trace: selected step, expanded children, the highlighted source line
  var openChildren = {};
  document.addEventListener("toggle", function (e) {
    var d = e.target;
    if (d && d.classList && d.classList.contains("wf-child")) openChildren[d.id] = d.open;
  }, true);
  function syncTrace() {
    var panel = document.getElementById("step-panel");
    var key = panel ? panel.dataset.key : "";
    document.querySelectorAll(".wf-row[data-key]").forEach(function (r) {
      r.classList.toggle("selected", !!key && r.dataset.key === key);
    });
    Object.keys(openChildren).forEach(function (id) {
      var d = document.getElementById(id);
      if (d && openChildren[id] && !d.open) d.open = true;
    });
    restoreKbd();
  }
  function scrollSource() {
    document.querySelectorAll(".source").forEach(function (pre) {
      var hl = pre.querySelector(".hl");
      if (hl && pre.scrollHeight > pre.clientHeight) pre.scrollTop = Math.max(0, hl.offsetTop - pre.clientHeight / 3);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { syncTrace(); scrollSource(); });
  document.addEventListener("htmx:afterSettle", function (e) {
    tick();
    syncTrace();
    if (e.target && e.target.id === "step-panel") scrollSource();
  });
  document.addEventListener("htmx:oobAfterSwap", syncTrace);

  // ---- action feedback
  function toast(text, isError) {
    var el = document.getElementById("toast");
    if (!el) return;
    el.className = isError ? "toast err" : "toast";
    el.textContent = text;
    setTimeout(function () { el.textContent = ""; }, 5000);
  }
  document.addEventListener("htmx:responseError", function (evt) {
    var xhr = evt.detail.xhr;
    toast(xhr.status === 403 || xhr.status === 409
      ? "Refused: " + (xhr.responseText || "forbidden").slice(0, 160)
      : "Request failed: HTTP " + xhr.status, true);
  });
  document.addEventListener("dq:notice", function (evt) { toast(evt.detail.value || "done", false); });

  // ---- "updated …": the time of the page's last live update (or of its render)
  document.addEventListener("htmx:sseMessage", function () {
    var el = document.getElementById("updated-ago");
    if (el) { el.dataset.ago = String(now()); tick(); }
  });

  // ---- keyboard: j/k move through the list or trace, Enter opens, Esc closes
  function typing() { return /input|textarea|select/i.test(document.activeElement.tagName); }
  function items() {
    var rows = document.querySelectorAll("#waterfall a.wf-row, #waterfall summary.wf-row");
    if (!rows.length) rows = document.querySelectorAll("main table.tbl tbody tr");
    return Array.prototype.filter.call(rows, function (r) { return r.offsetParent !== null; });
  }
  // The selection outlives a live update that swaps the rows: kept by the row's identity.
  var kbdId = "";
  function idOf(r) {
    if (r.dataset.key) return "k:" + r.dataset.key;
    var a = r.tagName === "A" ? r : r.querySelector("a[href]");
    return a ? "h:" + a.getAttribute("href") : "";
  }
  function restoreKbd() {
    if (!kbdId || document.querySelector(".kbd-sel")) return;
    var r = items().find(function (x) { return idOf(x) === kbdId; });
    if (r) r.classList.add("kbd-sel");
  }
  function move(step) {
    var list = items();
    if (!list.length) return;
    var at = list.findIndex(function (r) { return r.classList.contains("kbd-sel"); });
    var next = at < 0 ? (step > 0 ? 0 : list.length - 1) : Math.min(list.length - 1, Math.max(0, at + step));
    list.forEach(function (r) { r.classList.remove("kbd-sel"); });
    list[next].classList.add("kbd-sel");
    kbdId = idOf(list[next]);
    list[next].scrollIntoView({ block: "nearest" });
  }
  function open() {
    var sel = document.querySelector(".kbd-sel");
    if (!sel) return false;
    if (sel.tagName === "A" || sel.tagName === "SUMMARY") { sel.click(); return true; }
    var link = sel.querySelector("a[href]");
    if (link) { window.location.href = link.getAttribute("href"); return true; }
    return false;
  }
  function closePanel() {
    var panel = document.getElementById("step-panel");
    var toastEl = document.getElementById("toast");
    if (toastEl) toastEl.textContent = "";
    if (panel && panel.dataset.key) {
      var base = document.body.dataset.base || "";
      var m = window.location.pathname.slice(base.length).match(/^\/executions\/([^/]+)$/);
      if (m) {
        htmx.ajax("GET", base + "/executions/" + m[1] + "/step?key=", { target: "#step-panel", swap: "outerHTML" });
        history.replaceState(null, "", window.location.pathname + window.location.search.replace(/([?&])step=[^&]*&?/, "$1").replace(/[?&]$/, ""));
        return true;
      }
    }
    var sel = document.querySelector(".kbd-sel");
    kbdId = "";
    if (sel) { sel.classList.remove("kbd-sel"); return true; }
    return false;
  }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape") {
      if (typing()) { document.activeElement.blur(); return; }
      if (closePanel()) e.preventDefault();
      return;
    }
    if (typing()) return;
    if (e.key === "j") { move(1); e.preventDefault(); }
    else if (e.key === "k") { move(-1); e.preventDefault(); }
    else if (e.key === "Enter" && open()) { e.preventDefault(); }
  });

  // ---- the event log's filter box: rows (also those appended live) hidden unless they match
  function filterEvents() {
    var box = document.getElementById("event-filter");
    if (!box) return;
    var q = box.value.trim().toLowerCase().replace(/\s+/g, " ");
    document.querySelectorAll("#event-rows tr").forEach(function (tr) {
      tr.hidden = !!q && tr.textContent.toLowerCase().replace(/\s+/g, " ").indexOf(q) < 0;
    });
  }
  document.addEventListener("input", function (e) { if (e.target && e.target.id === "event-filter") filterEvents(); });
  document.addEventListener("htmx:afterSettle", filterEvents);
  document.addEventListener("htmx:sseMessage", function () { setTimeout(filterEvents, 0); });
})();
