// Header, overview tiles and the peers table.

import { copyButton, fill, h } from "./dom.js";
import { ago, bytes, duration, layers, plural, rtt, truncate } from "./format.js";
import { tone } from "./mesh.js";

/** A span whose seconds keep counting between status events (see app.js tick()). */
export function ticking(seconds, mode) {
  if (seconds === null || seconds === undefined) return h("span", {}, "—");
  return h(
    "span",
    { dataset: { tickBase: String(seconds), tickAt: String(Date.now()), tickMode: mode } },
    mode === "ago" ? ago(seconds) : duration(seconds),
  );
}

export function updateTicking(root) {
  for (const el of root.querySelectorAll("[data-tick-base]")) {
    const seconds = Number(el.dataset.tickBase) + (Date.now() - Number(el.dataset.tickAt)) / 1000;
    el.textContent = el.dataset.tickMode === "ago" ? ago(seconds) : duration(seconds);
  }
}

function pill(role, state) {
  const text = [role || "unknown", state && state !== role ? state : ""].filter(Boolean).join(" · ");
  return h("span", { class: "pill", "data-tone": tone(role, state) }, text);
}

export function renderIdent(host, view) {
  fill(
    host,
    h("span", { class: "ident-id", title: view.self.id }, view.self.shortId),
    pill(view.self.role, view.self.state),
    view.self.version ? h("span", { class: "muted" }, `v${view.self.version}`) : null,
  );
}

function tile(name, label, value, ...sub) {
  return h(
    "div",
    { class: "tile", "data-tile": name },
    h("div", { class: "tile-label" }, label),
    h("div", { class: "tile-value" }, value),
    sub.length ? h("div", { class: "tile-sub" }, sub) : null,
  );
}

function inviteTile(view) {
  if (view.inviteTokenHidden) {
    return tile("invite", "Invite token", h("span", { class: "muted" }, "Hidden"), view.inviteTokenHidden);
  }
  if (!view.inviteToken) {
    return tile(
      "invite",
      "Invite token",
      h("span", { class: "muted" }, "No invite token yet"),
      view.idle
        ? "An idle node belongs to no mesh."
        : "This node has not formed or joined a mesh, so there is nothing to share yet.",
    );
  }
  return tile(
    "invite",
    "Invite token",
    h("code", { class: "token", title: view.inviteToken }, truncate(view.inviteToken, 26)),
    copyButton(view.inviteToken, "Copy", { id: "copy-invite" }),
    h("span", { class: "muted" }, ` mesh-llm --join …`),
    view.meshId ? h("div", { class: "muted small" }, `mesh ${truncate(view.meshId, 20)}`) : null,
  );
}

// Discovery: whether this mesh is published, where, and the listing strangers see.
function discoveryTile(view) {
  const d = view.discovery;
  if (!d) return null;
  const listing = d.listing || {};
  const where = [
    ...(d.relays || []).filter((r) => r.ok).map((r) => r.url),
    ...(d.lan && d.lan.advertised ? ["LAN (mDNS)"] : []),
  ];
  let value;
  if (!d.publishing) value = h("span", { class: "muted" }, d.auto ? "Not published (found by discovery)" : "Not published");
  else if (d.delisted) value = h("span", { class: "muted" }, "Delisted");
  else if (d.published) value = `Published: public`;
  else value = h("span", { class: "muted" }, "Not published yet");
  return tile(
    "discovery",
    "Discovery",
    value,
    d.state ? h("div", { class: "muted small" }, d.state) : null,
    where.length ? h("div", { class: "small" }, `on ${where.join(", ")}`) : null,
    d.delisted ? h("div", { class: "small" }, d.delisted) : null,
    d.error ? h("div", { class: "small", "data-tone": "warn" }, d.error) : null,
    d.publishing && d.listing
      ? h(
          "div",
          { class: "muted small", "data-listing": "" },
          `listing: ${listing.name || "unnamed"}, ${plural(listing.node_count || 0, "node")}, `,
          `${plural(listing.client_count || 0, "client")}${listing.max_clients ? ` of ${listing.max_clients}` : ""}, `,
          `serving ${(listing.serving || []).join(", ") || "nothing yet"}${listing.region ? `, region ${listing.region}` : ""}`,
        )
      : null,
  );
}

export function renderTiles(host, view) {
  const usedShare = view.capacityBytes ? Math.min(view.usedBytes / view.capacityBytes, 1) : 0;
  const served = view.readyModels.map((m) => m.name);
  fill(
    host,
    tile(
      "node",
      "This node",
      h("span", { title: view.self.id }, view.self.shortId),
      pill(view.self.role, view.self.state),
      " up ",
      ticking(view.uptimeS, "duration"),
      view.nat && view.nat.seen.length
        ? h("div", { class: "muted", title: view.nat.seen.join(", ") }, `NAT: ${view.nat.type}`)
        : null,
    ),
    tile(
      "nodes",
      "Nodes",
      String(view.nodes.length),
      view.peers.length ? `this node + ${plural(view.peers.length, "peer")}` : "just this node",
    ),
    tile(
      "models",
      "Models served",
      String(view.readyModels.length),
      served.length
        ? truncate(served.join(", "), 60)
        : view.models.length
          ? `${plural(view.models.length, "model")} not ready yet`
          : "none",
    ),
    tile(
      "capacity",
      "Total capacity",
      bytes(view.capacityBytes),
      h("div", { class: "meter" }, h("div", { style: `width:${(usedShare * 100).toFixed(1)}%` })),
      `${bytes(view.usedBytes)} used by models`,
    ),
    slotsTile(view),
    tile(
      "inflight",
      "Requests in flight",
      String(view.inFlight),
      requestsLine(view),
    ),
    inviteTile(view),
    discoveryTile(view),
  );
}

/** How a peer's link travels; relayed links name their relay. */
function pathText(p) {
  if (!p.path) return "—";
  return p.path === "relayed" ? `relayed via ${(p.relay || "?").slice(0, 8)}` : p.path;
}

/** What this node's API did with its requests: answered them here, forwarded them, or both. */
function requestsLine(view) {
  const forwarded = Math.min(view.requestsForwarded, view.requestsTotal);
  const here = view.requestsTotal - forwarded;
  if (!forwarded) return `${plural(here, "request")} served by this node`;
  if (!here) return `${plural(forwarded, "request")} forwarded by this node`;
  return `${here} served here, ${forwarded} forwarded`;
}

function slotsTile(view) {
  const busy = view.engines.reduce((acc, e) => acc + e.busy, 0);
  const total = view.engines.reduce((acc, e) => acc + e.total, 0);
  return tile(
    "slots",
    "Slots busy",
    total ? `${busy}/${total}` : "—",
    ...view.engines.map((e) =>
      h(
        "div",
        { class: "small", "data-model": e.name, title: `tokens cached per slot: ${e.cached.join(", ")}` },
        `${e.name}: ${e.busy}/${e.total} busy · ${e.queued} queued · ${e.tokensPerS.toFixed(1)} tok/s · cached ${e.cached.join("/")}`,
      ),
    ),
    ...view.engines.flatMap((e) =>
      e.prefill.map((p) =>
        h(
          "div",
          { class: "small", "data-prefill": `${e.name}/${p.slot}` },
          `${e.name} slot ${p.slot}: prefill ${count(p.done)} / ${count(p.total)}`,
        ),
      ),
    ),
    ...view.engines
      .filter((e) => e.speculative)
      .map((e) => h("div", { class: "small", "data-draft": e.name }, draftLine(e))),
  );
}

const count = (n) => n.toLocaleString("en-US");

function draftLine(e) {
  const sp = e.speculative;
  const rate = sp.acceptance === null ? "no drafts yet" : `${Math.round(sp.acceptance * 100)}% accepted`;
  const per = sp.tokensPerStep === null ? "" : ` · ${sp.tokensPerStep.toFixed(2)} tokens/step`;
  return `${e.name} drafts with ${sp.draft}: ${rate}${per}`;
}

function modelsCell(node) {
  if (!node.models.length) return h("span", { class: "muted" }, "—");
  return node.models.map((m) =>
    h(
      "span",
      { class: "chip", "data-ready": m.ready ? "yes" : "no", title: `${m.name}: ${m.state}` },
      m.name,
      m.layers ? h("span", { class: "layers" }, ` ${layers(m.layers)}`) : null,
    ),
  );
}

export function renderPeers(host, warning, view) {
  if (view.versionMismatch.length) {
    const list = view.versionMismatch.map((p) => `${p.shortId} runs ${p.version}`).join(", ");
    warning.hidden = false;
    fill(
      warning,
      h("strong", {}, "Version mismatch: "),
      `this node runs ${view.self.version}; ${list}. Mixed versions may not interoperate — upgrade all nodes to the same version.`,
    );
  } else {
    warning.hidden = true;
    fill(warning);
  }
  if (!view.peers.length) {
    fill(
      host,
      h(
        "p",
        { class: "empty" },
        view.idle
          ? "No peers: an idle node is not part of a mesh."
          : "No peers yet: this node is alone. Share the invite token to add machines to the mesh.",
      ),
    );
    return;
  }
  const mismatched = new Set(view.versionMismatch.map((p) => p.id));
  const rows = view.peers.map((p) =>
    h(
      "tr",
      { "data-node-id": p.id, class: mismatched.has(p.id) ? "mismatch" : null },
      h("td", { title: p.id }, h("code", {}, p.shortId)),
      h("td", {}, pill(p.role, p.state)),
      h("td", { class: "path" }, pathText(p)),
      h("td", { class: "models-cell" }, modelsCell(p)),
      h(
        "td",
        { class: "num" },
        p.capacityBytes === null
          ? "—"
          : p.usedBytes === null
            ? `${bytes(p.capacityBytes)} offered`
            : `${bytes(p.usedBytes)} / ${bytes(p.capacityBytes)}`,
      ),
      h("td", { class: "num" }, rtt(p.rttMs)),
      h(
        "td",
        { class: mismatched.has(p.id) ? "version warn-text" : "version" },
        p.version || "—",
        mismatched.has(p.id) ? h("span", { title: `differs from this node's ${view.self.version}` }, " ⚠") : null,
      ),
      h("td", { class: "num" }, ticking(p.lastSeenS, "ago")),
    ),
  );
  fill(
    host,
    h(
      "table",
      { class: "peers" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Node", "Role", "Path", "Models", "Capacity", "RTT", "Version", "Last seen"].map((c) =>
            h("th", { scope: "col" }, c),
          ),
        ),
      ),
      h("tbody", {}, rows),
    ),
  );
}
