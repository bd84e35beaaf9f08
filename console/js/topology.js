// The mesh as an SVG: this node in the middle, peers around it, links labelled with RTT.

import { svg, fill, h } from "./dom.js";
import { bytes, layers, rtt, truncate } from "./format.js";
import { SPLIT_RTT_CAP_MS, tone } from "./mesh.js";

const W = 240; // card width
const MAX_MODELS = 4; // model lines per card before "+N more"
const LINE = 18;
const BODY = 100; // height above the model lines

function cardHeight(node) {
  const n = node.models.length;
  const lines = n === 0 ? 1 : Math.min(n, MAX_MODELS) + (n > MAX_MODELS ? 1 : 0);
  return BODY + lines * LINE;
}

/** Card centres: this node at the origin, peers on an ellipse big enough not to overlap. */
function layout(nodes) {
  const heights = nodes.map(cardHeight);
  const tallest = Math.max(...heights);
  const k = nodes.length - 1;
  const rx = Math.max(W + 120, (k * (W + 40)) / Math.PI);
  const ry = Math.max(tallest + 70, rx * 0.5);
  const start = k <= 2 ? 0 : -Math.PI / 2; // one or two peers: side by side, more: start on top
  return nodes.map((node, i) => {
    if (i === 0) return { node, x: 0, y: 0, h: heights[0] };
    const angle = start + ((i - 1) * 2 * Math.PI) / k;
    return { node, x: Math.round(rx * Math.cos(angle)), y: Math.round(ry * Math.sin(angle)), h: heights[i] };
  });
}

/** Where a segment from a card's centre leaves the card, as a fraction of the segment. */
function exitAt(dx, dy, halfW, halfH) {
  const tx = dx === 0 ? Infinity : halfW / Math.abs(dx);
  const ty = dy === 0 ? Infinity : halfH / Math.abs(dy);
  return Math.min(tx, ty, 1);
}

function link(from, to) {
  const dx = to.x - from.x;
  const dy = to.y - from.y;
  const t1 = exitAt(dx, dy, W / 2, from.h / 2);
  const t2 = 1 - exitAt(dx, dy, W / 2, to.h / 2);
  const t = (t1 + t2) / 2;
  const mx = from.x + dx * t;
  const my = from.y + dy * t;
  const ms = to.node.rttMs;
  const far = ms !== null && ms > SPLIT_RTT_CAP_MS;
  const label = ms === null ? "RTT ?" : rtt(ms);
  const title = far
    ? `round trip ${label}: over the ${SPLIT_RTT_CAP_MS} ms cap, so no model is split across this link`
    : `round trip ${label}`;
  return svg(
    "g",
    { class: "link", "data-tone": far ? "warn" : ms === null ? "client" : "ok", "data-peer": to.node.id },
    svg("title", {}, title),
    svg("line", { x1: from.x, y1: from.y, x2: to.x, y2: to.y, class: ms === null ? "dashed" : null }),
    svg("rect", { x: mx - 30, y: my - 11, width: 60, height: 22, rx: 11, class: "link-pill" }),
    svg("text", { x: mx, y: my + 4, "text-anchor": "middle", class: "link-label" }, label),
  );
}

function capacityLabel(node) {
  const kind = node.capacityKind === "ram" ? "RAM" : node.capacityKind === "vram" ? "VRAM" : "";
  if (node.capacityBytes === null) return "capacity unknown";
  if (node.capacityBytes === 0) return node.role === "client" ? "client: no VRAM offered" : "nothing offered";
  if (node.usedBytes === null) return `${bytes(node.capacityBytes)}${kind ? ` ${kind}` : ""} offered`;
  return `${bytes(node.usedBytes ?? 0)} of ${bytes(node.capacityBytes)}${kind ? ` ${kind}` : ""} used`;
}

function card(place) {
  const { node, x, y, h: height } = place;
  const left = x - W / 2;
  const top = y - height / 2;
  const nodeTone = tone(node.role, node.state);
  const cap = node.capacityBytes ?? 0;
  const used = Math.max(0, Math.min(cap ? (node.usedBytes ?? 0) / cap : 0, 1));
  const barW = W - 28;
  const hover = [
    `node ${node.id}`,
    node.version ? `version ${node.version}` : "",
    node.addresses.length ? `addresses ${node.addresses.join(", ")}` : "",
  ].filter(Boolean);
  const g = svg(
    "g",
    {
      class: node.self ? "node self" : "node",
      "data-node-id": node.id,
      "data-tone": nodeTone,
      transform: `translate(${left} ${top})`,
    },
    svg("title", {}, hover.join("\n")),
    svg("rect", { width: W, height, rx: 10, class: "card-bg" }),
    svg("rect", { x: 4, y: 9, width: 4, height: height - 18, rx: 2, class: "stripe" }),
    svg("text", { x: 16, y: 24, class: "node-title" }, node.shortId || "?"),
    node.self ? svg("text", { x: W - 12, y: 24, "text-anchor": "end", class: "tag" }, "this node") : null,
    svg(
      "text",
      { x: 16, y: 44, class: "node-role" },
      [node.role || "unknown", node.state && node.state !== node.role ? node.state : ""].filter(Boolean).join(" · "),
    ),
    svg("rect", { x: 14, y: 56, width: barW, height: 9, rx: 4.5, class: "bar-free" }),
    svg("rect", { x: 14, y: 56, width: Math.max(used > 0 ? 3 : 0, used * barW), height: 9, rx: 4.5, class: "bar-used" }),
    svg("text", { x: 14, y: 82, class: "bar-label" }, capacityLabel(node)),
  );
  const shown = node.models.slice(0, MAX_MODELS);
  if (!shown.length) {
    g.append(svg("text", { x: 14, y: BODY + 10, class: "muted-text" }, "no models"));
  }
  shown.forEach((m, i) => {
    const yLine = BODY + 10 + i * LINE;
    const range = layers(m.layers);
    g.append(
      svg(
        "g",
        { class: "model-line", "data-model": m.name, "data-ready": m.ready ? "yes" : "no" },
        svg("title", {}, `${m.name}: ${m.state}${m.role ? `, ${m.role}` : ""}${range ? `, layers ${range.slice(1)}` : ""}`),
        svg("circle", { cx: 19, cy: yLine - 4, r: 4, class: m.ready ? "dot ready" : "dot waiting" }),
        svg("text", { x: 30, y: yLine, class: "model-name" }, truncate(m.name, range ? 20 : 27)),
        range ? svg("text", { x: W - 12, y: yLine, "text-anchor": "end", class: "layers" }, range) : null,
      ),
    );
  });
  if (node.models.length > MAX_MODELS) {
    g.append(
      svg("text", { x: 30, y: BODY + 10 + MAX_MODELS * LINE, class: "muted-text" }, `+${node.models.length - MAX_MODELS} more`),
    );
  }
  return g;
}

/** Draw the mesh into `host`. */
export function renderTopology(host, view) {
  const places = layout(view.nodes);
  const minX = Math.min(...places.map((p) => p.x - W / 2)) - 20;
  const maxX = Math.max(...places.map((p) => p.x + W / 2)) + 20;
  const minY = Math.min(...places.map((p) => p.y - p.h / 2)) - 20;
  const maxY = Math.max(...places.map((p) => p.y + p.h / 2)) + 20;
  const width = maxX - minX;
  const height = maxY - minY;
  const root = svg(
    "svg",
    {
      viewBox: `${minX} ${minY} ${width} ${height}`,
      role: "img",
      "aria-label": `Mesh topology: ${view.nodes.length} node${view.nodes.length === 1 ? "" : "s"}`,
      // Never scale a small mesh above 1:1; a large one shrinks to fit.
      style: `max-width:${Math.round(width * 1.15)}px`,
    },
    places.slice(1).map((p) => link(places[0], p)),
    places.map(card),
  );
  fill(
    host,
    root,
    view.peers.length
      ? null
      : h("p", { class: "caption" }, "Just this node so far: peers appear here as they join the mesh."),
  );
}
