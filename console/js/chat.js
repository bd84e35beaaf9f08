// Model picker and chat. The page posts to the console's same-origin relay (POST /api/chat),
// which forwards to this node's /v1/chat/completions and passes the SSE stream through.

import { fill, h } from "./dom.js";
import { millis } from "./format.js";

const KEY_STORE = "mesh-llm.api-key";
const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]", "::1"]);

const HEADINGS = {
  model_not_found: "Model not available",
  model_not_ready: "Model not ready",
  backend_unavailable: "The model server failed",
  backend_failed: "The model server failed mid-answer",
  backend_error: "The model server failed",
  invalid_api_key: "API key needed",
  no_api: "No API on this node",
  api_unreachable: "The API is not answering",
  relay_failed: "Connection lost mid-answer",
};

/** Split a byte stream into server-sent events ({event, data}). */
export async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const boundary = /\r?\n\r?\n/;
  const parse = (block) => {
    let event = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    return data.length ? { event, data: data.join("\n") } : null;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let match;
    while ((match = boundary.exec(buffer))) {
      const block = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      const ev = parse(block);
      if (ev) yield ev;
    }
  }
  buffer += decoder.decode();
  const last = buffer.trim() ? parse(buffer) : null;
  if (last) yield last;
}

/** An OpenAI-shaped error body (or anything else) -> {heading, message, code}. */
export function describeError(httpStatus, bodyText, retryAfter) {
  let message = "";
  let code = "";
  try {
    const body = JSON.parse(bodyText);
    const err = body && typeof body === "object" ? body.error ?? body : null;
    if (err && typeof err === "object") {
      message = String(err.message ?? err.detail ?? "");
      code = err.code ? String(err.code) : "";
    } else if (typeof err === "string") {
      message = err;
    }
  } catch {
    message = String(bodyText || "").slice(0, 500);
  }
  if (!message) message = httpStatus ? `The API answered HTTP ${httpStatus} with no message.` : "Unknown error.";
  if (retryAfter && !/retry in/i.test(message)) message += ` Try again in ${retryAfter} s.`;
  const heading = HEADINGS[code] || (httpStatus ? `Request failed (HTTP ${httpStatus})` : "Request failed");
  return { heading, message, code, httpStatus };
}

export class Chat {
  constructor(root) {
    this.root = root;
    this.picker = root.querySelector("#model-picker");
    this.notice = root.querySelector("#model-notice");
    this.messages = root.querySelector("#messages");
    this.form = root.querySelector("#chat-form");
    this.prompt = root.querySelector("#prompt");
    this.maxTokens = root.querySelector("#max-tokens");
    this.keyRow = root.querySelector("#api-key-row");
    this.keyInput = root.querySelector("#api-key");
    this.sendButton = root.querySelector("#send");
    this.stopButton = root.querySelector("#stop");
    this.clearButton = root.querySelector("#clear");
    this.history = [];
    this.models = [];
    this.chosen = null; // the model in the picker; kept across status updates
    this.picked = false; // true once the person chose one themselves
    this.abort = null;
    this.keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
    if (this.keyInput.value) this.keyRow.hidden = false;

    this.picker.addEventListener("change", () => {
      this.chosen = this.picker.value || null;
      this.picked = this.chosen !== null;
      this.showNotice();
    });
    this.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.send();
    });
    this.prompt.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.send();
      }
    });
    this.stopButton.addEventListener("click", () => this.abort?.abort());
    this.clearButton.addEventListener("click", () => {
      this.abort?.abort();
      this.history = [];
      this.showEmpty();
    });
    this.keyInput.addEventListener("change", () => sessionStorage.setItem(KEY_STORE, this.keyInput.value));
    this.showEmpty();
  }

  showEmpty() {
    fill(this.messages, h("p", { class: "empty" }, "Pick a model and ask it something. Answers stream in token by token."));
  }

  /** New status: refresh the picker without losing the person's choice. */
  update(view) {
    this.models = view.models;
    // The console adds the node's key for loopback visitors only; others must type it.
    if (view.apiAuth && !LOOPBACK.has(location.hostname)) this.keyRow.hidden = false;
    const names = this.models.map((m) => m.name);
    if (!this.picked) {
      // Until the person picks, follow the best default: the first ready model.
      this.chosen = (this.models.find((m) => m.ready) || this.models[0] || {}).name || null;
    }
    const options = this.models.map((m) =>
      h(
        "option",
        { value: m.name, "data-ready": m.ready ? "yes" : "no" },
        `${m.name} — ${m.ready ? `ready${m.mode === "split" ? " (split)" : ""}` : m.state || "not ready"}`,
      ),
    );
    if (this.chosen && !names.includes(this.chosen)) {
      options.push(h("option", { value: this.chosen, "data-ready": "no" }, `${this.chosen} — gone from the mesh`));
    }
    if (!options.length) options.push(h("option", { value: "" }, "no models in the mesh"));
    fill(this.picker, options);
    this.picker.value = this.chosen || "";
    this.picker.disabled = !this.models.length && !this.chosen;
    this.showNotice();
    this.syncButtons();
  }

  selected() {
    return this.models.find((m) => m.name === this.chosen) || null;
  }

  showNotice() {
    const m = this.selected();
    let text = "";
    if (!this.chosen) text = "No node in this mesh serves a model yet: there is nothing to chat with.";
    else if (!m) text = `${this.chosen} is no longer served by any node in the mesh. Pick another model.`;
    else if (!m.ready) {
      text = `${m.name} is ${m.state || "not ready"}${m.message ? `: ${m.message}` : ""}. Requests fail until it is ready.`;
    }
    this.notice.hidden = !text;
    this.notice.textContent = text;
  }

  syncButtons() {
    const busy = this.abort !== null;
    this.sendButton.disabled = busy || !this.chosen;
    this.stopButton.hidden = !busy;
  }

  scroll() {
    this.messages.scrollTop = this.messages.scrollHeight;
  }

  bubble(kind, ...children) {
    if (this.messages.querySelector(".empty")) fill(this.messages);
    const el = h("div", { class: `msg ${kind}` }, children);
    this.messages.append(el);
    this.scroll();
    return el;
  }

  errorBubble(err) {
    const el = this.bubble(
      "error",
      h("div", { class: "msg-head" }, `⚠ ${err.heading}`, err.code ? h("code", { class: "code" }, err.code) : null),
      h("div", { class: "msg-text" }, err.message),
    );
    el.setAttribute("role", "alert");
    if (err.code === "invalid_api_key") {
      this.keyRow.hidden = false;
      this.keyInput.focus();
    }
    return el;
  }

  async send() {
    const text = this.prompt.value.trim();
    if (!text || this.abort || !this.chosen) return;
    const model = this.chosen;
    this.prompt.value = "";
    this.bubble("user", h("div", { class: "msg-text" }, text));
    const turns = [...this.history, { role: "user", content: text }];
    const body = { model, messages: turns, stream: true };
    const max = Number.parseInt(this.maxTokens.value, 10);
    if (Number.isFinite(max) && max > 0) body.max_tokens = max;

    const answerText = document.createTextNode("");
    const caret = h("span", { class: "caret" });
    const meta = h("div", { class: "msg-meta" }, `${model} · waiting for the first token…`);
    const answer = this.bubble("assistant", h("div", { class: "msg-text" }, answerText, caret), meta);
    answer.dataset.state = "waiting";

    const headers = { "content-type": "application/json" };
    if (this.keyInput.value) headers.authorization = `Bearer ${this.keyInput.value}`;
    this.abort = new AbortController();
    this.syncButtons();
    const t0 = performance.now();
    let tFirst = null;
    let tLast = null;
    let chunks = 0;
    let finish = "";
    let outcome = "cut"; // done | cut | error | stopped
    try {
      const res = await fetch("/api/chat", {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: this.abort.signal,
      });
      if (!res.ok || !res.body) {
        answer.remove();
        this.errorBubble(describeError(res.status, await res.text(), res.headers.get("retry-after")));
        outcome = "error";
        return;
      }
      for await (const ev of sseEvents(res.body)) {
        if (ev.data === "[DONE]") {
          outcome = "done";
          break;
        }
        let chunk;
        try {
          chunk = JSON.parse(ev.data);
        } catch {
          continue;
        }
        if (ev.event === "error" || chunk.error) {
          this.errorBubble(describeError(0, JSON.stringify(chunk.error ? chunk : { error: chunk })));
          outcome = "error";
          break;
        }
        const choice = Array.isArray(chunk.choices) ? chunk.choices[0] : null;
        const delta = choice?.delta?.content ?? choice?.text ?? "";
        if (choice?.finish_reason) finish = choice.finish_reason;
        if (!delta) continue;
        const now = performance.now();
        if (tFirst === null) {
          tFirst = now;
          answer.dataset.state = "streaming";
        }
        tLast = now;
        chunks += 1;
        answer.dataset.chunks = String(chunks); // content events so far: tests read it, not timing
        answerText.appendData(delta);
        this.scroll();
      }
    } catch (exc) {
      if (exc && exc.name === "AbortError") outcome = "stopped";
      else {
        this.errorBubble({
          heading: "Connection to the console lost",
          message: `${exc?.message || exc}. The answer may be incomplete.`,
          code: "",
        });
        outcome = "error";
      }
    } finally {
      this.abort = null;
      this.syncButtons();
      caret.remove();
      if (answer.isConnected) {
        answer.dataset.state = outcome;
        fill(meta, metrics(model, t0, tFirst, tLast, chunks, finish, outcome));
        if (!answerText.data && outcome !== "done") answer.classList.add("empty-answer");
      }
      if (outcome === "done" || (outcome === "stopped" && answerText.data)) {
        this.history = [...turns, { role: "assistant", content: answerText.data }];
      }
      if (outcome === "cut") {
        this.errorBubble({
          heading: "The answer was cut off",
          message: "The stream ended before the model finished. The node may have stopped.",
          code: "",
        });
      }
      this.prompt.focus();
    }
  }
}

/** "SmolLM2-135M · 42 tokens · 85.1 tok/s · TTFT 120 ms" */
function metrics(model, t0, tFirst, tLast, chunks, finish, outcome) {
  const parts = [model];
  if (tFirst !== null) {
    const decodeS = (tLast - tFirst) / 1000;
    const rate = chunks > 1 && decodeS > 0 ? (chunks - 1) / decodeS : null;
    parts.push(`${chunks} token${chunks === 1 ? "" : "s"}`);
    parts.push(
      h("span", { class: "stat", "data-stat": "rate", title: "decode speed after the first token" }, rate === null ? "— tok/s" : `${rate.toFixed(1)} tok/s`),
    );
    parts.push(h("span", { class: "stat", "data-stat": "ttft", title: "time to first token" }, `TTFT ${millis(tFirst - t0)}`));
  } else {
    parts.push("no tokens");
  }
  if (finish === "length") parts.push("stopped at max tokens");
  if (outcome === "stopped") parts.push("stopped");
  const out = [];
  parts.forEach((p, i) => {
    if (i) out.push(" · ");
    out.push(p);
  });
  return out;
}
