// The Backprop Service dashboard: a small single-page app on hash routes (#/jobs, #/jobs/<id>, #/models,
// #/models/<id>) over the same /v1 API that clients use. The API key is entered once and kept in localStorage.
// Live training curves come from GET /v1/jobs/<id>/events, read with fetch() and parsed here, because EventSource
// cannot send an Authorization header. No inline script or style anywhere (the page has a strict CSP), and every
// piece of server data reaches the DOM as text, never as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "backprop.apiKey";
  const POLL_MS = 2000;
  const MAX_RECONNECT_MS = 10000;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const ACTIVE = new Set(["queued", "running"]);

  const viewEl = document.getElementById("view");
  const bannerEl = document.getElementById("banner");
  const signOutEl = document.getElementById("sign-out");

  // --- small helpers ------------------------------------------------------------------------------------------

  /** h("a", {href: "#/x", class: "c"}, "text", child): an element; strings become text nodes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
      else if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function fmtNum(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return "—";
    if (typeof x !== "number") return String(x);
    if (Number.isInteger(x)) return String(x);
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(3);
    return String(Number(x.toPrecision(4)));  // 4 significant digits, no trailing zeros
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  function fmtValue(v) {
    if (typeof v === "number") return fmtNum(v);
    if (v === null || v === undefined) return "—";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function badge(status) {
    return h("span", {class: `badge status-${status}`, "data-status": status}, status);
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, {once: true});
    });
  }

  function showBanner(message) {
    bannerEl.textContent = message;
    bannerEl.hidden = false;
  }

  function hideBanner() {
    bannerEl.hidden = true;
    bannerEl.textContent = "";
  }

  // --- the API key ----------------------------------------------------------------------------------------------

  function getKey() {
    try { return localStorage.getItem(KEY_STORAGE); } catch { return null; }
  }

  function setKey(key) {
    try { localStorage.setItem(KEY_STORAGE, key); } catch { /* storage disabled: the key lives for this page only */ }
    memoryKey = key;
  }

  function clearKey() {
    try { localStorage.removeItem(KEY_STORAGE); } catch { /* nothing stored */ }
    memoryKey = null;
  }

  let memoryKey = null;
  function currentKey() { return getKey() || memoryKey; }

  // --- the API --------------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail, body) {
      super(status ? `${detail} (HTTP ${status})` : detail);
      this.status = status;
      this.detail = detail;
      this.body = body;
    }
  }

  let authMessage = null;

  /** A 401 anywhere: forget the key and ask for it again, saying why. */
  function unauthorized(detail) {
    clearKey();
    authMessage = `The server rejected the API key${detail ? `: ${detail}` : ""}. Enter a valid key.`;
    route();
  }

  async function problemOf(response) {
    let body = null;
    let detail = response.statusText || "request failed";
    try {
      body = await response.json();
      if (body && typeof body.detail === "string") detail = body.detail;
      else if (body && typeof body.title === "string") detail = body.title;
    } catch { /* not JSON: keep the status text */ }
    return new ApiError(response.status, detail, body);
  }

  function authHeaders(extra) {
    return {Authorization: `Bearer ${currentKey() || ""}`, ...extra};
  }

  async function api(path, {method = "GET", body, signal} = {}) {
    const headers = authHeaders({Accept: "application/json"});
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, signal, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, `cannot reach the server (${err.message})`);
    }
    if (response.status === 401) {
      const err = await problemOf(response);
      unauthorized(err.detail);
      throw err;
    }
    if (!response.ok) throw await problemOf(response);
    return response.status === 204 ? null : response.json();
  }

  // --- views and routing ----------------------------------------------------------------------------------------

  /** Per-view lifetime: aborting `signal` stops its timers, fetches and streams when the user navigates away. */
  function newContext() {
    const controller = new AbortController();
    const cleanups = [];
    return {
      signal: controller.signal,
      get alive() { return !controller.signal.aborted; },
      onCleanup(fn) { cleanups.push(fn); },
      close() { controller.abort(); cleanups.forEach((fn) => fn()); },
    };
  }

  let current = null;

  function setNav(active) {
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === active) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  function route() {
    if (current) current.close();
    current = newContext();
    hideBanner();
    viewEl.replaceChildren();
    signOutEl.hidden = !currentKey();
    if (!currentKey()) {
      setNav(null);
      renderKeyForm(current);
      return;
    }
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
    const [section, id] = parts;
    if (parts.length <= 1 && (section === undefined || section === "jobs")) renderJobs(current);
    else if (parts.length === 2 && section === "jobs") renderJob(current, id);
    else if (parts.length === 1 && section === "models") renderModels(current);
    else if (parts.length === 2 && section === "models") renderModel(current, id);
    else {
      setNav(null);
      viewEl.append(h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", {href: "#/jobs"}, "Go to the jobs.")));
    }
  }

  function failView(ctx, err, what) {
    if (!ctx.alive || (err && err.name === "AbortError") || (err && err.status === 401)) return;
    const message = err && err.status === 404 ? `${what} not found: ${err.detail}` : `Could not load ${what}: ${err.message}`;
    viewEl.replaceChildren(h("h1", {}, what), h("p", {class: "error", role: "alert", "data-error": ""}, message));
  }

  // --- key form -------------------------------------------------------------------------------------------------

  function renderKeyForm(ctx) {
    const input = h("input", {
      type: "password", id: "api-key", name: "api-key", autocomplete: "off", spellcheck: "false", required: true,
      placeholder: "bp_live_…", size: 48,
    });
    const error = h("p", {class: "error", role: "alert", id: "key-error"});
    if (authMessage) error.textContent = authMessage;
    const button = h("button", {type: "submit", id: "key-submit"}, "Sign in");
    const form = h("form", {id: "key-form", class: "card narrow"},
      h("h1", {}, "API key"),
      h("p", {class: "muted"},
        "Paste a key made by ", h("code", {}, "backprop keys create NAME"), " (or the one ",
        h("code", {}, "backprop serve"), " printed on its first start). It is kept in this browser's local storage ",
        "until you sign out."),
      h("label", {for: "api-key"}, "Key"), input, button, error);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) { error.textContent = "Enter a key."; return; }
      button.disabled = true;
      error.textContent = "";
      try {
        const response = await fetch("/v1/jobs?limit=1", {
          headers: {Authorization: `Bearer ${key}`, Accept: "application/json"}, signal: ctx.signal, cache: "no-store",
        });
        if (response.status === 401) {
          error.textContent = `That key was rejected: ${(await problemOf(response)).detail}`;
          return;
        }
        if (!response.ok) {
          error.textContent = `The server answered ${(await problemOf(response)).message}; try again.`;
          return;
        }
        authMessage = null;
        setKey(key);
        route();
      } catch (err) {
        if (err.name !== "AbortError") error.textContent = `Cannot reach the server (${err.message}).`;
      } finally {
        button.disabled = false;
      }
    });
    viewEl.append(form);
    input.focus();
  }

  signOutEl.addEventListener("click", () => {
    clearKey();
    authMessage = null;
    route();
  });

  // --- jobs list --------------------------------------------------------------------------------------------------

  function progressBar(value) {
    const p = Math.max(0, Math.min(1, Number(value) || 0));
    return h("progress", {max: "1", value: String(p), title: `${Math.round(p * 100)} %`}, `${Math.round(p * 100)} %`);
  }

  function renderJobs(ctx) {
    setNav("jobs");
    const tbody = h("tbody", {id: "jobs-body"});
    const note = h("p", {class: "muted", id: "jobs-note"}, "Loading…");
    const table = h("table", {class: "list", id: "jobs-table"},
      h("thead", {}, h("tr", {},
        ["Job", "Status", "Progress", "Epoch", "Loss", "Val loss", "Created"].map((c) => h("th", {scope: "col"}, c)))),
      tbody);
    viewEl.append(h("h1", {}, "Jobs"), table, note);

    async function poll() {
      while (ctx.alive) {
        if (!document.hidden) {
          try {
            const page = await api("/v1/jobs?limit=50", {signal: ctx.signal});
            if (!ctx.alive) return;
            hideBanner();
            tbody.replaceChildren(...page.data.map(jobRow));
            table.dataset.count = String(page.data.length);
            note.textContent = page.data.length === 0
              ? "No jobs yet. Launch one with POST /v1/jobs (see the API docs); it appears here within seconds."
              : `${page.has_more ? "The newest 50 jobs. " : ""}Updated ${new Date().toLocaleTimeString()}.`;
          } catch (err) {
            if (!ctx.alive || err.name === "AbortError" || err.status === 401) return;
            showBanner(`Could not refresh the jobs: ${err.message}. Retrying…`);
          }
        }
        await sleep(POLL_MS, ctx.signal);
      }
    }
    poll();
  }

  function jobRow(job) {
    return h("tr", {"data-job-id": job.id, "data-status": job.status},
      h("td", {}, h("a", {href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono"}, job.id)),
      h("td", {}, badge(job.status)),
      h("td", {}, progressBar(job.progress)),
      h("td", {class: "num"}, `${job.epoch} / ${job.epochs}`),
      h("td", {class: "num"}, fmtNum(job.loss)),
      h("td", {class: "num"}, fmtNum(job.val_loss)),
      h("td", {}, fmtTime(job.created_at)));
  }

  // --- one job: details, live curve, cancel ----------------------------------------------------------------------

  /** The loss chart: x = epoch, series loss and val_loss. `data-points` on the container counts plotted epochs. */
  function lossChart(ctx, container) {
    const data = [[], [], []];
    const width = () => Math.max(320, container.clientWidth || 640);
    const plot = new uPlot({
      width: width(),
      height: 320,
      scales: {x: {time: false}},
      axes: [{label: "epoch"}, {label: "loss"}],
      series: [
        {label: "epoch"},
        {label: "loss", stroke: "#2563eb", width: 2, value: (_, v) => fmtNum(v)},
        {label: "val_loss", stroke: "#dc2626", width: 2, dash: [6, 4], value: (_, v) => fmtNum(v)},
      ],
    }, data, container);
    container.dataset.points = "0";
    let pending = false;

    function redraw() {
      pending = false;
      if (!ctx.alive) return;
      plot.setData(data);
      container.dataset.points = String(data[0].length);
      container.dataset.lastEpoch = data[0].length ? String(data[0][data[0].length - 1]) : "";
    }

    const onResize = () => plot.setSize({width: width(), height: 320});
    window.addEventListener("resize", onResize);
    ctx.onCleanup(() => { window.removeEventListener("resize", onResize); plot.destroy(); });

    return {
      add(epoch, loss, valLoss) {
        // A job resumed from a checkpoint may publish an epoch again: replace from there, keeping x increasing.
        let n = data[0].length;
        while (n > 0 && data[0][n - 1] >= epoch) n -= 1;
        if (n < data[0].length) data.forEach((series) => { series.length = n; });
        data[0].push(epoch);
        data[1].push(loss);
        data[2].push(valLoss === undefined ? null : valLoss);
        if (!pending) {
          pending = true;
          requestAnimationFrame(redraw);
        }
      },
      /** Draw what has arrived now, not at the next animation frame (which a busy or hidden page may delay). */
      flush() {
        if (pending) redraw();
      },
    };
  }

  /**
   * Follows a job's event stream until its terminal status event, reconnecting after a drop with Last-Event-ID.
   * onEvent(type, data, id) gets each event; onState(state, detail) hears "connecting", "live", "reconnecting",
   * "done" and "error".
   */
  async function followEvents(ctx, jobId, onEvent, onState) {
    let lastId = null;
    let retry = 1000;
    let failures = 0;
    while (ctx.alive) {
      let terminal = false;
      try {
        onState(lastId === null ? "connecting" : "reconnecting");
        const headers = authHeaders({Accept: "text/event-stream"});
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
          headers, signal: ctx.signal, cache: "no-store",
        });
        if (response.status === 401) {
          unauthorized((await problemOf(response)).detail);
          return;
        }
        if (!response.ok) {
          const err = await problemOf(response);
          // Client errors will not go away by retrying (429 and 5xx might).
          if (response.status < 500 && response.status !== 429) { onState("error", err.message); return; }
          throw err;
        }
        onState("live");
        failures = 0;
        // Aborting ctx.signal (leaving the page) also ends this reader's pending read().
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        let event = {type: "", data: [], id: null};
        const dispatch = () => {
          if (event.id !== null) lastId = event.id;
          if (event.data.length) {
            const type = event.type || "message";
            let payload;
            try { payload = JSON.parse(event.data.join("\n")); } catch { payload = null; }
            if (payload !== null) {
              if (type === "status" && TERMINAL.has(payload.status)) terminal = true;
              onEvent(type, payload, event.id);
            }
          }
          event = {type: "", data: [], id: null};
        };
        const line = (text) => {
          if (text === "") { dispatch(); return; }
          if (text.startsWith(":")) return;  // a comment: the server's keepalive
          const colon = text.indexOf(":");
          const field = colon < 0 ? text : text.slice(0, colon);
          let value = colon < 0 ? "" : text.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "data") event.data.push(value);
          else if (field === "event") event.type = value;
          else if (field === "id" && !value.includes("\0")) event.id = value;
          else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
        };
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buffer += value;
          for (;;) {
            const m = /\r\n|\r|\n/.exec(buffer);
            if (!m) break;
            if (m[0] === "\r" && m.index === buffer.length - 1) break;  // maybe the first half of "\r\n"
            line(buffer.slice(0, m.index));
            buffer = buffer.slice(m.index + m[0].length);
          }
        }
        if (terminal) { onState("done"); return; }
      } catch (err) {
        if (!ctx.alive || err.name === "AbortError") return;
        if (terminal) { onState("done"); return; }
        failures += 1;
        onState("reconnecting", err.message);
      }
      // The stream ended before the job did (a dropped connection, a restarted server): resume where it stopped.
      await sleep(Math.min(MAX_RECONNECT_MS, retry * 2 ** Math.min(failures, 4)), ctx.signal);
    }
  }

  function specSummary(spec) {
    if (!spec) return "—";
    const opt = spec.optimizer || {};
    const parts = [
      `${spec.epochs} epochs`, `batch ${spec.batch_size}`,
      `${opt.name || "?"}${opt.learning_rate ? ` lr ${fmtNum(opt.learning_rate)}` : ""}`,
    ];
    if (spec.validation_split) parts.push(`validation ${fmtNum(spec.validation_split)}`);
    if (spec.schedule && spec.schedule.name) parts.push(`schedule ${spec.schedule.name}`);
    if (spec.early_stopping) parts.push("early stopping");
    if (spec.seed !== undefined && spec.seed !== null) parts.push(`seed ${spec.seed}`);
    return parts.join(" · ");
  }

  function renderJob(ctx, jobId) {
    setNav("jobs");
    const statusEl = h("span", {id: "job-status"});
    const cancelBtn = h("button", {type: "button", id: "cancel-job", class: "danger", hidden: true}, "Cancel job");
    const progressEl = h("div", {id: "job-progress", class: "progress-line"});
    const factsEl = h("dl", {id: "job-facts", class: "facts"});
    const metricsEl = h("dl", {id: "job-metrics", class: "facts"});
    const resultEl = h("div", {id: "job-result"});
    const streamEl = h("span", {id: "stream-state", class: "muted"});
    const chartEl = h("div", {id: "loss-chart", class: "chart", "data-points": "0"});
    viewEl.append(
      h("p", {class: "crumbs"}, h("a", {href: "#/jobs"}, "← Jobs")),
      h("div", {class: "title-row"}, h("h1", {}, "Job ", h("span", {class: "mono"}, jobId)), statusEl, cancelBtn),
      progressEl, resultEl,
      h("section", {class: "card"}, h("div", {class: "title-row"}, h("h2", {}, "Loss"), streamEl), chartEl),
      h("div", {class: "columns"},
        h("section", {class: "card"}, h("h2", {}, "Latest epoch"), metricsEl),
        h("section", {class: "card"}, h("h2", {}, "Job"), factsEl)));

    let job = null;
    let latest = null;
    const chart = lossChart(ctx, chartEl);

    function dl(el, pairs) {
      el.replaceChildren(...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {"data-key": k}, v)]));
    }

    function draw() {
      if (!job || !ctx.alive) return;
      statusEl.replaceChildren(badge(job.status));
      viewEl.dataset.status = job.status;
      cancelBtn.hidden = !ACTIVE.has(job.status);
      cancelBtn.disabled = Boolean(job.cancel_requested);
      cancelBtn.textContent = job.cancel_requested ? "Cancel requested…" : "Cancel job";
      const epoch = Math.max(job.epoch || 0, latest ? latest.epoch : 0);
      const progress = TERMINAL.has(job.status) ? job.progress : Math.max(job.progress || 0, epoch / job.epochs);
      progressEl.replaceChildren(progressBar(progress), h("span", {id: "job-epoch"}, `epoch ${epoch} / ${job.epochs}`));
      const rec = latest || {loss: job.loss, val_loss: job.val_loss, metrics: job.metrics || {}, epoch: job.epoch};
      dl(metricsEl, [
        ["epoch", String(rec.epoch ?? "—")], ["loss", fmtNum(rec.loss)], ["val_loss", fmtNum(rec.val_loss)],
        ...Object.entries(rec.metrics || {}).map(([k, v]) => [k, fmtNum(v)]),
      ]);
      dl(factsEl, [
        ["network", h("span", {class: "mono"}, job.network_id)],
        ["dataset", h("span", {class: "mono"}, job.dataset_id)],
        ["training", specSummary(job.spec)],
        ["attempt", `${job.attempt} of ${job.max_attempts}`],
        ["created", fmtTime(job.created_at)],
        ["started", fmtTime(job.started_at)],
        ["finished", fmtTime(job.finished_at)],
      ]);
      const result = [];
      if (job.error) {
        result.push(h("p", {class: "error", role: "alert", id: "job-error"},
          `Failed (${job.error.code}): ${job.error.message}`));
      }
      if (job.model_id) {
        result.push(h("p", {class: "ok"}, job.status === "succeeded" ? "Training finished. " : "Partial model kept. ",
          h("a", {href: `#/models/${encodeURIComponent(job.model_id)}`, id: "model-link"}, "Open the model →")));
      }
      if (job.status === "cancelled" && !job.model_id) result.push(h("p", {class: "muted"}, "Cancelled."));
      resultEl.replaceChildren(...result);
    }

    async function refresh() {
      try {
        job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`, {signal: ctx.signal});
        draw();
      } catch (err) {
        if (job === null) failView(ctx, err, "Job");
        else if (ctx.alive && err.name !== "AbortError" && err.status !== 401) showBanner(err.message);
        throw err;
      }
    }

    cancelBtn.addEventListener("click", async () => {
      cancelBtn.disabled = true;
      try {
        job = await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, {method: "POST", signal: ctx.signal});
        draw();
      } catch (err) {
        if (!ctx.alive || err.name === "AbortError" || err.status === 401) return;
        showBanner(err.status === 409 ? `Not cancelled: ${err.detail}` : `Could not cancel: ${err.message}`);
        refresh().catch(() => {});
      }
    });

    let epochEvents = 0;
    const onEvent = (type, data) => {
      if (type === "epoch") {
        chart.add(data.epoch, data.loss, data.val_loss);
        chartEl.dataset.epochEvents = String(++epochEvents);  // received, as opposed to plotted: shows duplicates
        latest = data;
        draw();
      } else if (type === "status" && job) {
        job.status = data.status;
        draw();
        // The resource has what the event does not (timestamps, attempts, the model): read it again.
        refresh().catch(() => {});
      }
    };
    const onState = (state, detail) => {
      if (!ctx.alive) return;
      if (state === "done") chart.flush();  // the curve is complete the moment the stream says so
      chartEl.dataset.stream = state;
      const text = {
        connecting: "connecting…", live: "● live", reconnecting: "reconnecting…", done: "complete", error: "unavailable",
      }[state] || state;
      streamEl.textContent = detail ? `${text} (${detail})` : text;
    };

    refresh().then(() => followEvents(ctx, jobId, onEvent, onState), () => {});
  }

  // --- models -----------------------------------------------------------------------------------------------------

  function layersSummary(spec) {
    if (!spec || !Array.isArray(spec.layers)) return "—";
    const layers = spec.layers.map((l) => `${l.units} ${l.activation}${l.dropout ? ` (dropout ${l.dropout})` : ""}`);
    return [`${spec.input_dim} inputs`, ...layers].join(" → ");
  }

  function countParams(spec) {
    if (!spec || !Array.isArray(spec.layers)) return null;
    let n = 0;
    let fanIn = spec.input_dim;
    for (const l of spec.layers) { n += (fanIn + 1) * l.units; fanIn = l.units; }
    return n;
  }

  /** A model's final epoch metrics: `metrics.final` (loss, val_loss, accuracy, ...), or the top level if flat. */
  function finalMetrics(metrics) {
    const m = metrics || {};
    return m.final && typeof m.final === "object" ? m.final : m;
  }

  /** [name, value] pairs to show: the final metrics first by their own names, then the rest (best_epoch, ...),
   * nested objects flattened to dotted names. */
  function modelMetrics(metrics) {
    const pairs = Object.entries(finalMetrics(metrics));
    const flatten = (prefix, value) => (value && typeof value === "object" && !Array.isArray(value)
      ? Object.entries(value).flatMap(([k, v]) => flatten(`${prefix}.${k}`, v)) : [[prefix, value]]);
    for (const [k, v] of Object.entries(metrics || {})) {
      if (k !== "final" || !(v && typeof v === "object")) pairs.push(...flatten(k, v));
    }
    return pairs;
  }

  function renderModels(ctx) {
    setNav("models");
    viewEl.append(h("h1", {}, "Models"));
    api("/v1/models?limit=50", {signal: ctx.signal}).then((page) => {
      if (!ctx.alive) return;
      if (page.data.length === 0) {
        viewEl.append(h("p", {class: "muted"}, "No models yet: a job that succeeds makes one."));
        return;
      }
      viewEl.append(h("table", {class: "list", id: "models-table"},
        h("thead", {}, h("tr", {}, ["Model", "Task", "Network", "Loss", "Val loss", "Created"].map(
          (c) => h("th", {scope: "col"}, c)))),
        h("tbody", {}, page.data.map((m) => h("tr", {"data-model-id": m.id},
          h("td", {}, h("a", {href: `#/models/${encodeURIComponent(m.id)}`, class: "mono"}, m.id),
            m.partial ? h("span", {class: "badge"}, "partial") : null),
          h("td", {}, m.task),
          h("td", {}, layersSummary(m.spec)),
          h("td", {class: "num"}, fmtNum(finalMetrics(m.metrics).loss)),
          h("td", {class: "num"}, fmtNum(finalMetrics(m.metrics).val_loss)),
          h("td", {}, fmtTime(m.created_at)))))));
      if (page.has_more) viewEl.append(h("p", {class: "muted"}, "The newest 50 models."));
    }, (err) => failView(ctx, err, "Models"));
  }

  /** Rows from the textarea: JSON ([[..], ..], one row [..], or {"inputs": ...}) or CSV (an optional header line). */
  function parseRows(text) {
    const trimmed = text.trim();
    if (!trimmed) throw new Error("Enter at least one row.");
    let rows;
    if (trimmed.startsWith("[") || trimmed.startsWith("{")) {
      let value;
      try { value = JSON.parse(trimmed); } catch (err) { throw new Error(`Not valid JSON: ${err.message}`); }
      if (value && !Array.isArray(value) && typeof value === "object") value = value.inputs;
      if (!Array.isArray(value)) throw new Error('JSON input must be a list of rows, or {"inputs": [[...], ...]}.');
      rows = value.length && !Array.isArray(value[0]) ? [value] : value;
      rows.forEach((row, i) => {
        if (!Array.isArray(row)) throw new Error(`Row ${i + 1} is not a list.`);
        row.forEach((v, j) => {
          if (typeof v !== "number" || !Number.isFinite(v)) {
            throw new Error(`Row ${i + 1}, column ${j + 1}: ${JSON.stringify(v)} is not a finite number.`);
          }
        });
      });
    } else {
      const lines = trimmed.split(/\r\n|\r|\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
      const split = (l) => l.split(/\s*[,;\t]\s*|\s+/).filter((c) => c !== "");
      const isNum = (c) => c.trim() !== "" && Number.isFinite(Number(c));
      if (lines.length && !split(lines[0]).some(isNum)) lines.shift();  // a header line
      rows = lines.map((l, i) => split(l).map((c, j) => {
        if (!isNum(c)) throw new Error(`Line ${i + 1}, column ${j + 1}: "${c}" is not a number.`);
        return Number(c);
      }));
    }
    if (!rows.length) throw new Error("Enter at least one row.");
    return rows;
  }

  function renderModel(ctx, modelId) {
    setNav("models");
    api(`/v1/models/${encodeURIComponent(modelId)}`, {signal: ctx.signal}).then((model) => {
      if (!ctx.alive) return;
      const classes = Array.isArray(model.classes) ? model.classes : null;
      const metrics = modelMetrics(model.metrics);
      const params = countParams(model.spec);
      const inputDim = model.spec ? model.spec.input_dim : null;
      const textarea = h("textarea", {
        id: "predict-input", name: "inputs", rows: "8", spellcheck: "false",
        placeholder: inputDim ? `One row per line, ${inputDim} numbers each (CSV), or JSON [[...], ...], e.g.\n`
          + `${Array.from({length: inputDim}, (_, i) => (i + 1) / 10).join(", ")}` : "",
      });
      const error = h("p", {class: "error", role: "alert", id: "predict-error"});
      const output = h("div", {id: "predict-output"});
      const button = h("button", {type: "submit", id: "predict-submit"}, "Predict");
      const form = h("form", {id: "predict-form", class: "card"},
        h("h2", {}, "Predict"),
        h("label", {for: "predict-input"}, "Rows (raw features; the model applies its own input scaling)"),
        textarea, h("div", {}, button), error, output);

      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        error.textContent = "";
        let rows;
        try {
          rows = parseRows(textarea.value);
          const bad = inputDim ? rows.findIndex((r) => r.length !== inputDim) : -1;
          if (bad >= 0) throw new Error(`Row ${bad + 1} has ${rows[bad].length} values; this model takes ${inputDim}.`);
        } catch (err) {
          error.textContent = err.message;
          output.replaceChildren();
          return;
        }
        button.disabled = true;
        try {
          const result = await api(`/v1/models/${encodeURIComponent(modelId)}/predict`, {
            method: "POST", body: {inputs: rows}, signal: ctx.signal,
          });
          if (!ctx.alive) return;
          output.replaceChildren(predictionTable(rows, result, classes));
        } catch (err) {
          if (!ctx.alive || err.name === "AbortError" || err.status === 401) return;
          error.textContent = `Prediction failed: ${err.message}`;
          output.replaceChildren();
        } finally {
          button.disabled = false;
        }
      });

      viewEl.append(
        h("p", {class: "crumbs"}, h("a", {href: "#/models"}, "← Models")),
        h("div", {class: "title-row"}, h("h1", {}, "Model ", h("span", {class: "mono"}, model.id)),
          model.partial ? h("span", {class: "badge"}, "partial") : null),
        h("div", {class: "columns"},
          h("section", {class: "card"}, h("h2", {}, "Network"), h("dl", {class: "facts", id: "model-spec"},
            h("dt", {}, "layers"), h("dd", {}, layersSummary(model.spec)),
            h("dt", {}, "loss"), h("dd", {}, model.spec ? String(model.spec.loss) : "—"),
            h("dt", {}, "parameters"), h("dd", {}, params === null ? "—" : String(params)),
            h("dt", {}, "task"), h("dd", {}, model.task),
            h("dt", {}, "classes"), h("dd", {}, classes ? classes.map(String).join(", ") : "—"),
            h("dt", {}, "input scaling"), h("dd", {}, model.input_scaling ? "standardized (stored)" : "none"),
            h("dt", {}, "job"), h("dd", {}, h("a", {href: `#/jobs/${encodeURIComponent(model.job_id)}`, class: "mono"},
              model.job_id)),
            h("dt", {}, "created"), h("dd", {}, fmtTime(model.created_at)))),
          h("section", {class: "card"}, h("h2", {}, "Metrics"), h("dl", {class: "facts", id: "model-metrics"},
            metrics.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {"data-key": k}, fmtValue(v))])))),
        form);
    }, (err) => failView(ctx, err, "Model"));
  }

  function predictionTable(rows, result, classes) {
    const outputs = result.outputs || [];
    const labels = Array.isArray(result.labels) ? result.labels : null;
    const width = outputs.length ? outputs[0].length : 0;
    const names = classes && classes.length === width ? classes.map((c) => `P(${c})`)
      : Array.from({length: width}, (_, i) => `output ${i}`);
    const head = ["#", "input", ...(labels ? ["label"] : []), ...names];
    return h("table", {class: "list", id: "predictions", "data-rows": String(outputs.length)},
      h("thead", {}, h("tr", {}, head.map((c) => h("th", {scope: "col"}, c)))),
      h("tbody", {}, outputs.map((out, i) => h("tr", {"data-label": labels ? String(labels[i]) : null},
        h("td", {class: "num"}, String(i + 1)),
        h("td", {class: "mono"}, rows[i] ? rows[i].map(String).join(", ") : ""),
        labels ? h("td", {class: "label"}, String(labels[i])) : null,
        out.map((v) => h("td", {class: "num"}, fmtNum(v)))))));
  }

  // --- start ------------------------------------------------------------------------------------------------------

  window.addEventListener("hashchange", route);
  window.addEventListener("storage", (event) => {
    if (event.key === KEY_STORAGE) route();  // signed in or out in another tab
  });
  route();
})();
