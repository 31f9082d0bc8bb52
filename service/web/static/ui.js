// The playground at /ui: plain JavaScript over the public REST API (no build step, no
// dependencies). Every call goes to this page's own origin; with a token typed in (kept in
// sessionStorage, so it lasts as long as the tab) it is sent as "Authorization: Bearer".
// Refusals are RFC 9457 problem documents: their title, detail and categories are shown.
"use strict";

(() => {
  const TOKEN_KEY = "guarded-inference.token";
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let chatModel = null;
  let conversation = [];

  // --- DOM helpers (text only: nothing from an answer is parsed as HTML) -------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(key === "className" ? "class" : key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function show(target, ...nodes) {
    target.replaceChildren(...nodes.filter((node) => node));
  }

  function fields(pairs) {
    const list = el("dl");
    for (const [name, label, value] of pairs) {
      if (value === null || value === undefined) continue;
      list.append(el("dt", {}, label), el("dd", { "data-field": name }, value));
    }
    return list;
  }

  const fixed = (number, digits = 4) =>
    typeof number === "number" ? number.toFixed(digits) : String(number);

  // --- calls --------------------------------------------------------------------------------
  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  class Problem extends Error {
    constructor(doc) {
      super(doc.detail || doc.title || "request failed");
      this.doc = doc;
    }
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json, application/problem+json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new Problem({ title: "The service could not be reached", detail: String(error) });
    }
    if (!response.ok) {
      let doc = null;
      try {
        doc = await response.json();
      } catch {
        doc = null;
      }
      if (!doc || typeof doc !== "object") doc = { detail: response.statusText };
      throw new Problem({ status: response.status, title: response.statusText, ...doc });
    }
    return response;
  }

  // A problem document (or an OpenAI error event) as a box: status and title, detail, the
  // guard's categories, the invalid fields.
  function problemBox(doc) {
    const box = el("div", { className: "problem", role: "alert" });
    const status = doc.status ? `${doc.status} ` : "";
    box.append(el("h3", { "data-field": "title" }, `${status}${doc.title || "Refused"}`));
    if (doc.detail) box.append(el("p", { "data-field": "detail" }, doc.detail));
    if (Array.isArray(doc.categories) && doc.categories.length) {
      const list = el("ul", { "data-field": "categories", "aria-label": "Hazard categories" });
      for (const category of doc.categories) {
        list.append(el("li", { "data-code": category.code }, `${category.code} ${category.name}`));
      }
      box.append(el("p", {}, `Hazard categories${doc.stage ? ` (${doc.stage} screen)` : ""}:`));
      box.append(list);
    }
    if (Array.isArray(doc.errors) && doc.errors.length) {
      const list = el("ul", { "data-field": "errors" });
      for (const error of doc.errors) {
        const where = (error.loc || []).filter((part) => part !== "body").join(".");
        list.append(el("li", {}, where ? `${where}: ${error.msg}` : error.msg));
      }
      box.append(list);
    }
    if (doc.status === 401) box.append(el("p", {}, "Enter a valid token above."));
    const extra = [doc.type && doc.type !== "about:blank" ? doc.type : null, doc.request_id];
    if (extra.some(Boolean)) box.append(el("p", { className: "muted" }, extra.filter(Boolean).join(" | ")));
    return box;
  }

  function failure(target, error) {
    const doc = error instanceof Problem ? error.doc : { title: "Error", detail: String(error) };
    show(target, problemBox(doc));
  }

  async function busy(form, target, work) {
    const buttons = form.querySelectorAll("button");
    buttons.forEach((button) => (button.disabled = true));
    target.setAttribute("aria-busy", "true");
    try {
      await work();
    } catch (error) {
      failure(target, error);
    } finally {
      target.removeAttribute("aria-busy");
      buttons.forEach((button) => (button.disabled = false));
    }
  }

  // --- verdicts -------------------------------------------------------------------------------
  function verdict(screen) {
    if (!screen) return el("span", { className: "muted" }, "off (this screen is switched off)");
    const names = (screen.categories || []).map((c) => `${c.code} ${c.name}`).join(", ");
    const word = screen.safe ? "safe" : `unsafe${names ? `: ${names}` : ""}`;
    const span = el("span", { className: `verdict ${screen.safe ? "safe" : "unsafe"}` }, word);
    const notes = [screen.blocked ? "blocked" : null, screen.model, screen.cached ? "cached" : null];
    if (typeof screen.latency_ms === "number") notes.push(`${fixed(screen.latency_ms, 1)} ms`);
    return el("span", {}, span, " ", el("span", { className: "muted" }, `(${notes.filter(Boolean).join(", ")})`));
  }

  // --- models ---------------------------------------------------------------------------------
  async function loadModels() {
    const select = $("classify-model");
    try {
      const listing = await (await call("GET", "v1/models")).json();
      select.replaceChildren(
        ...listing.models.map((model) =>
          el("option", { value: model.name, selected: model.default ? "selected" : null },
            model.default ? `${model.name} (default)` : model.name)
        )
      );
      const chat = (listing.data || []).find((model) => model.kind === "chat");
      chatModel = chat ? chat.id : null;
      $("chat-model").textContent = chatModel || "the chat model (chat is off)";
      show($("auth-result"));
    } catch (error) {
      failure($("auth-result"), error);
    }
  }

  // --- classify -------------------------------------------------------------------------------
  async function classify(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const target = $("classify-result");
    await busy(form, target, async () => {
      const body = { text: $("classify-text").value };
      if ($("classify-model").value) body.model = $("classify-model").value;
      const outcome = await (await call("POST", "v1/classify", body)).json();
      const result = outcome.results[0];
      const scores = el("table", { "data-field": "scores" },
        el("caption", { className: "muted" }, "Probabilities"),
        el("tr", {}, el("th", { scope: "col" }, "Label"), el("th", { scope: "col" }, "Probability")),
        ...Object.entries(result.probabilities).map(([label, p]) =>
          el("tr", { "data-label": label }, el("td", {}, label), el("td", {}, fixed(p)))
        )
      );
      show(target,
        fields([
          ["model", "Model", `${outcome.model.name} ${outcome.model.version}`],
          ["label", "Label", result.label],
          ["score", "Score", fixed(result.score)],
          ["answered-by", "Answered by", result.answered_by],
          ["input-screen", "Input screen", verdict(result.screens.input)],
          ["output-screen", "Output screen", verdict(result.screens.output)],
        ]),
        scores,
        el("p", { className: "muted" },
          `guard ${fixed(outcome.timing.guard_ms, 1)} ms, model ${fixed(outcome.timing.model_ms, 1)} ms, ` +
          `total ${fixed(outcome.timing.total_ms, 1)} ms`)
      );
      loadDrift();
    });
  }

  // --- chat (streamed: server-sent events read from the fetch body) ----------------------------
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
          if (data) yield data;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async function chat(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const target = $("chat-result");
    const text = $("chat-text").value;
    if (!text.trim()) return;
    const messages = [...conversation, { role: "user", content: text }];
    const log = $("chat-log");
    const asked = el("li", { className: "user" }, el("span", { className: "who" }, "you"), text);
    const content = el("span", { "data-field": "reply" });
    const answer = el("li", { className: "assistant", "aria-live": "polite" },
      el("span", { className: "who" }, chatModel || "assistant"), content);
    log.append(asked);
    show(target, el("p", { className: "muted" }, "screening the conversation..."));
    await busy(form, target, async () => {
      let response;
      try {
        response = await call("POST", "v1/chat/completions",
          { model: chatModel || "", messages, stream: true });
      } catch (error) {
        asked.append(el("span", { className: "who blocked" }, " refused"));
        throw error;
      }
      log.append(answer);
      show(target, el("p", { className: "muted" }, "streaming..."));
      let reply = "";
      let end = null;
      for await (const data of events(response)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          end = { error: chunk.error };
          break;
        }
        const choice = (chunk.choices || [])[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          reply += choice.delta.content;
          content.textContent = reply;
        }
        if (choice.finish_reason) end = choice;
      }
      $("chat-text").value = "";
      if (end && end.error) {
        show(target, problemBox({ title: "The reply failed", detail: end.error.message,
          type: end.error.code }));
      } else if (end && end.finish_reason === "content_filter") {
        const guard = end.guard || {};
        show(target, problemBox({ title: "The guard stopped the reply", stage: guard.stage,
          detail: "the rest of the reply was judged unsafe and was not sent",
          categories: guard.categories || [] }));
      } else if (end) {
        conversation = [...messages, { role: "assistant", content: reply }];
        show(target, el("p", { className: "muted", "data-field": "finish-reason" },
          `finished: ${end.finish_reason}`));
      } else {
        show(target, problemBox({ title: "The stream ended early", detail: "no end of reply" }));
      }
    });
  }

  function resetChat() {
    conversation = [];
    $("chat-log").replaceChildren();
    show($("chat-result"));
  }

  // --- moderation -----------------------------------------------------------------------------
  async function moderate(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const target = $("moderate-result");
    await busy(form, target, async () => {
      const result = await (await call("POST", "v1/moderate", { text: $("moderate-text").value })).json();
      const categories = (result.categories || []).map((c) => `${c.code} ${c.name}`).join(", ");
      show(target, fields([
        ["verdict", "Verdict", verdict(result)],
        ["blocked", "Blocked by the policy", result.blocked ? "yes" : "no"],
        ["categories", "Categories", categories || "none"],
      ]));
    });
  }

  // --- drift ------------------------------------------------------------------------------------
  function driftChart(model, check) {
    const rows = check.features;
    const rowHeight = 24;
    const left = 90;
    const barWidth = 300;
    const top = 22;
    // Twice the threshold fills at least half the width; past 4x a bar is cut at the edge.
    const scale = Math.min(4, Math.max(2, ...rows.map((f) => f.statistic / f.threshold)));
    const height = top + rows.length * rowHeight + 8;
    const chart = svg("svg", {
      class: "drift-chart", "data-model": model, role: "img", width: 560, height,
      viewBox: `0 0 560 ${height}`,
      "aria-label": `Drift of ${model}: each feature's statistic over its threshold ` +
        `(the dashed line); ${check.drifted_features.length} drifted`,
    });
    chart.append(svg("title", {}, `Drift statistics of ${model}`));
    chart.append(svg("text", { x: left, y: 14 }, "statistic / threshold"));
    rows.forEach((feature, index) => {
      const y = top + index * rowHeight;
      const ratio = feature.statistic / feature.threshold;
      const width = Math.max(1, Math.min(1, ratio / scale) * barWidth);
      chart.append(svg("text", { x: 0, y: y + 15 }, feature.feature));
      chart.append(svg("rect", {
        class: feature.drift ? "bar drifted" : "bar", x: left, y: y + 3, width, height: rowHeight - 8,
        "data-feature": feature.feature,
      }));
      chart.append(svg("text", { x: left + barWidth + 8, y: y + 15 },
        `${fixed(feature.statistic, 3)} / ${fixed(feature.threshold, 2)}${feature.drift ? " drift" : ""}`));
    });
    const line = left + barWidth / scale;
    chart.append(svg("line", { class: "threshold", x1: line, x2: line, y1: top, y2: height - 4 }));
    return chart;
  }

  async function loadDrift(event) {
    if (event) event.preventDefault();
    const target = $("drift-result");
    try {
      const report = await (await call("GET", "v1/drift")).json();
      if (!report.enabled) {
        show(target, el("p", {}, "The drift monitor is off (DRIFT_ENABLED=false)."));
        return;
      }
      const nodes = [];
      const unmonitored = [];
      const idle = [];
      for (const model of report.models) {
        if (!model.monitored) {
          unmonitored.push(`${model.model}${model.reason ? ` (${model.reason})` : ""}`);
          continue;
        }
        if (!model.check && !model.window.texts) {
          idle.push(model.model);
          continue;
        }
        const state = model.drift === true ? "in drift" : model.drift === false ? "no drift" : "no verdict yet";
        const win = model.window;
        nodes.push(el("h3", {}, model.model));
        nodes.push(el("p", { "data-model": model.model, "data-field": "drift" },
          `${state}; window ${win.texts} of ${win.max_texts} texts ` +
          `(a verdict from ${win.min_texts})`));
        if (model.check) nodes.push(driftChart(model.model, model.check));
        else nodes.push(el("p", { className: "muted" }, "not checked yet"));
      }
      if (idle.length) nodes.push(el("p", { className: "muted" }, `No texts yet: ${idle.join(", ")}`));
      if (unmonitored.length) {
        nodes.push(el("p", { className: "muted" }, `Not monitored: ${unmonitored.join("; ")}`));
      }
      show(target, ...nodes);
    } catch (error) {
      failure(target, error);
    }
  }

  // --- token ----------------------------------------------------------------------------------
  function useToken(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    refresh();
  }

  function refresh() {
    loadModels();
    loadDrift();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token").value = token();
    $("auth-form").addEventListener("submit", useToken);
    $("token-forget").addEventListener("click", forgetToken);
    $("classify-form").addEventListener("submit", classify);
    $("chat-form").addEventListener("submit", chat);
    $("chat-reset").addEventListener("click", resetChat);
    $("moderate-form").addEventListener("submit", moderate);
    $("drift-form").addEventListener("submit", loadDrift);
    refresh();
  });
})();
