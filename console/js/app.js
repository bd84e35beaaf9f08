// Entry point: keep a live status from /api/events and render the page from it.

import { Chat } from "./chat.js";
import { copyButton } from "./dom.js";
import { duration } from "./format.js";
import { meshView } from "./mesh.js";
import { renderIdent, renderPeers, renderTiles, updateTicking } from "./panels.js";
import { renderTopology } from "./topology.js";

const $ = (id) => document.getElementById(id);

const page = {
  status: null,
  updatedAt: 0, // Date.now() of the last status
  connection: "connecting", // connecting | live | reconnecting
  chat: new Chat($("chat")),
};

function render() {
  if (!page.status) return;
  const view = meshView(page.status);
  document.body.dataset.state = view.self.state || "unknown";
  document.title = `mesh-llm · ${view.self.shortId} · ${view.self.state}`;
  renderIdent($("ident"), view);
  renderTiles($("tiles"), view);
  renderTopology($("topology"), view);
  renderPeers($("peers"), $("version-warning"), view);
  $("idle").hidden = !view.idle;
  // An idle node has no API: the page stays read-only.
  $("chat").hidden = view.idle || !view.hasApi;
  if (!$("chat").hidden) page.chat.update(view);
}

function setConnection(state) {
  page.connection = state;
  document.body.dataset.connection = state;
  const badge = $("connection");
  badge.dataset.state = state;
  if (state === "live") {
    badge.textContent = "live";
    badge.title = "Receiving updates from /api/events";
  } else if (state === "reconnecting") {
    const since = page.updatedAt ? ` · last update ${duration((Date.now() - page.updatedAt) / 1000)} ago` : "";
    badge.textContent = `reconnecting…${since}`;
    badge.title = "The connection to this node was lost; retrying. What you see may be out of date.";
  } else if (state === "locked") {
    badge.textContent = "locked";
    badge.title = "This node needs its API key";
  } else {
    badge.textContent = "connecting…";
  }
}

function accept(status) {
  if (!status || typeof status !== "object") return;
  page.status = status;
  page.updatedAt = Date.now();
  render();
}

/** EventSource retries by itself after network errors; after a fatal one (HTTP error, wrong
 * content type) it gives up, so we open a new one with backoff. Either way the badge says so. */
function connect() {
  let retryMs = 1000;
  const open = () => {
    const source = new EventSource("/api/events");
    source.addEventListener("open", () => {
      retryMs = 1000;
    });
    source.addEventListener("status", (ev) => {
      let status;
      try {
        status = JSON.parse(ev.data);
      } catch {
        return;
      }
      setConnection("live");
      accept(status);
    });
    source.addEventListener("error", () => {
      setConnection("reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(open, retryMs);
        retryMs = Math.min(retryMs * 2, 15000);
      }
    });
  };
  open();
}

function wireIdleCommands() {
  for (const li of document.querySelectorAll("#idle .commands li")) {
    const code = li.querySelector("code");
    if (code) li.append(copyButton(code.textContent, "Copy"));
  }
}

/** A node started with --api-key answers 401 until the page has its session cookie. */
function showLogin() {
  setConnection("locked");
  document.getElementById("login").hidden = false;
  const form = document.getElementById("login-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = document.getElementById("login-key").value;
    const res = await fetch("/api/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ key }),
    }).catch(() => null);
    if (res && res.ok) {
      location.reload();
    } else {
      document.getElementById("login-error").textContent = res ? "That is not this node's API key." : "The node did not answer.";
    }
  });
}

wireIdleCommands();
setConnection("connecting");
// A first paint without waiting for the stream; the stream's data wins if it came first.
fetch("/api/status")
  .then((r) => {
    if (r.status === 401) {
      showLogin();
      return "locked";
    }
    return r.ok ? r.json() : null;
  })
  .then((status) => {
    if (status === "locked") return;
    if (!page.status) accept(status);
    connect();
  })
  .catch(() => connect());
setInterval(() => {
  updateTicking(document);
  if (page.connection === "reconnecting") setConnection("reconnecting");
}, 1000);

// For tests and for poking around in devtools.
window.meshConsole = page;
