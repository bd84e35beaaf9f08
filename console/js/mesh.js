// The status JSON -> what the page shows (pure: no DOM). Every field is optional here, so the
// page works against today's status and against newer ones with peers, shards and tokens.

const isObj = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
const arr = (x) => (Array.isArray(x) ? x : []);
const num = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);
const str = (x) => (x === null || x === undefined ? "" : String(x));

export const SPLIT_RTT_CAP_MS = 80;

const BAD_STATES = new Set(["failed", "degraded", "stopping", "stopped", "gone", "unreachable", "dead", "error"]);
const BUSY_STATES = new Set(["starting", "loading", "resolving", "restarting", "joining", "downloading"]);

/** The colour family of a node or model: by trouble first, then by role. */
export function tone(role, state) {
  const st = str(state).toLowerCase();
  if (BAD_STATES.has(st)) return "bad";
  if (BUSY_STATES.has(st)) return "warn";
  switch (str(role).toLowerCase()) {
    case "host":
      return "ok";
    case "worker":
      return "info";
    case "standby":
      return "standby";
    default:
      return "client"; // client, idle, unknown
  }
}

function layerRange(x) {
  if (Array.isArray(x) && x.length === 2 && num(x[0]) !== null && num(x[1]) !== null) return [x[0], x[1]];
  return null;
}

function modelState(m) {
  if (m.ready === true) return "ready";
  return str(m.state) || "not ready";
}

function selfNode(status) {
  const cap = isObj(status.capacity) ? status.capacity : {};
  const id = str(status.node_id);
  const node = {
    id,
    shortId: str(status.short_id) || id.slice(0, 8),
    self: true,
    role: str(status.role),
    state: str(status.state),
    capacityBytes: num(cap.offered_bytes),
    usedBytes: num(cap.used_bytes) ?? 0,
    capacityKind: str(cap.kind),
    device: str(cap.device),
    version: str(status.version),
    rttMs: null,
    path: null,
    relay: null,
    lastSeenS: null,
    addresses: [],
    models: arr(status.models)
      .filter((m) => isObj(m) && m.local !== false)
      .map((m) => ({
        name: str(m.name),
        ready: m.ready === true,
        state: modelState(m),
        role: str(m.role) || "host",
        layers: null,
      })),
  };
  // A split worker holds layers of a model another node hosts: status.worker_of.
  for (const duty of arr(status.worker_of).filter(isObj)) {
    const range = layerRange(duty.layers);
    const name = str(duty.model);
    if (!name || node.models.some((m) => m.name === name && m.layers)) continue;
    const state = str(duty.state) || "unknown";
    node.models.push({ name, ready: state === "ready", state, role: "worker", layers: range });
  }
  return node;
}

function peerNode(p) {
  const id = str(p.node_id);
  return {
    id,
    shortId: str(p.short_id) || id.slice(0, 8),
    self: false,
    role: str(p.role),
    state: str(p.state),
    capacityBytes: num(p.capacity_bytes),
    usedBytes: num(p.used_bytes),
    capacityKind: "",
    device: "",
    version: str(p.version),
    rttMs: num(p.rtt_ms),
    // How the link travels: "direct", "punched" (through NATs) or "relayed" via a member; null: no link.
    path: p.path ? str(p.path) : null,
    relay: p.relay ? str(p.relay) : null,
    lastSeenS: num(p.last_seen_s),
    addresses: arr(p.addresses).map(str),
    models: arr(p.models)
      .filter(isObj)
      .map((m) => ({
        name: str(m.name),
        ready: m.ready === true,
        state: modelState(m),
        role: str(m.role),
        layers: layerRange(m.layers),
      })),
  };
}

function hostsOf(m) {
  const hosts = arr(m.hosts).map(str).filter(Boolean);
  return hosts.length ? hosts : m.host ? [str(m.host)] : [];
}

/** Fill in layer ranges from `models[].shards` for nodes that did not report them themselves. */
function applyShards(statusModels, byId) {
  for (const m of statusModels) {
    const hosts = hostsOf(m);
    for (const shard of arr(m.shards).filter(isObj)) {
      const node = byId.get(str(shard.node_id));
      const range = layerRange([shard.start_layer, shard.end_layer]);
      if (!node || !range) continue;
      if (!node.self && num(shard.bytes) !== null) node.shardBytes = (node.shardBytes ?? 0) + shard.bytes;
      let entry = node.models.find((x) => x.name === str(m.name));
      if (!entry) {
        entry = {
          name: str(m.name),
          ready: m.ready === true,
          state: modelState(m),
          role: hosts.includes(node.id) ? "host" : "worker",
          layers: null,
        };
        node.models.push(entry);
      }
      if (!entry.layers) entry.layers = range;
    }
  }
}

/** Every model the mesh knows of, for the tiles and the picker: ready anywhere counts as ready. */
function catalog(statusModels, peers) {
  const byName = new Map();
  const entry = (name) => {
    if (!byName.has(name)) {
      byName.set(name, { name, ready: false, state: "", message: "", mode: "", hosts: new Set(), sizeBytes: null });
    }
    return byName.get(name);
  };
  for (const m of statusModels) {
    const e = entry(str(m.name));
    e.ready = e.ready || m.ready === true;
    if (!e.state || m.ready === true) e.state = modelState(m);
    if (m.ready !== true && m.message) e.message = str(m.message);
    const shards = arr(m.shards);
    e.mode = str(m.mode) || e.mode || (shards.length > 1 ? "split" : "solo");
    e.sizeBytes = num(m.size_bytes) ?? e.sizeBytes;
    for (const h of hostsOf(m)) e.hosts.add(h);
  }
  for (const peer of peers) {
    for (const m of peer.models) {
      const e = entry(m.name);
      if (m.role === "worker") {
        e.mode = e.mode || "split";
        continue; // a worker holds layers; only hosts answer chat
      }
      e.hosts.add(peer.id);
      e.ready = e.ready || m.ready;
      if (!e.state || m.ready) e.state = m.state;
      e.mode = e.mode || "solo";
    }
  }
  for (const e of byName.values()) {
    if (e.ready) {
      e.state = "ready";
      e.message = "";
    }
  }
  return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
}

/** One local model server's slots: busy, queued, speed, what each slot has cached and which prefill. */
function engineView(m) {
  const sl = m.slots;
  return {
    name: str(m.name),
    busy: num(sl.slots_busy) ?? 0,
    total: num(sl.slots_total) ?? 0,
    queued: num(sl.queued) ?? 0,
    tokensPerS: num(sl.tokens_per_s) ?? 0,
    cached: arr(sl.slots).filter(isObj).map((x) => num(x.cached_tokens) ?? 0),
    prefill: arr(sl.slots).filter(isObj).map(prefillView).filter((p) => p !== null),
    speculative: specView(sl.speculative),
  };
}

/** A slot prefilling its prompt: its id, prompt tokens done and the prompt's length; else null. */
function prefillView(slot) {
  const p = slot.prefill;
  if (!isObj(p) || num(p.done) === null || num(p.total) === null) return null;
  return { slot: num(slot.id) ?? 0, done: p.done, total: p.total };
}

/** The drafter of a model server and how well it does, or null without speculative decoding. */
function specView(sp) {
  if (!isObj(sp)) return null;
  return {
    draft: str(sp.draft),
    acceptance: num(sp.acceptance),
    tokensPerStep: num(sp.tokens_per_step),
  };
}

/** Everything the page renders, derived from one status snapshot. */
export function meshView(status) {
  const s = isObj(status) ? status : {};
  const statusModels = arr(s.models).filter(isObj);
  const self = selfNode(s);
  const peers = arr(s.peers).filter(isObj).map(peerNode);
  const nodes = [self, ...peers];
  applyShards(statusModels, new Map(nodes.map((n) => [n.id, n])));
  for (const peer of peers) {
    // null means "not reported", which the page must not show as zero.
    if (peer.usedBytes === null && peer.shardBytes) peer.usedBytes = peer.shardBytes;
  }
  const models = catalog(statusModels, peers);
  const sum = (xs) => xs.reduce((acc, x) => acc + (x ?? 0), 0);
  const api = isObj(s.api) ? s.api : {};
  return {
    self,
    peers,
    nodes,
    models,
    readyModels: models.filter((m) => m.ready),
    capacityBytes: sum(nodes.map((n) => n.capacityBytes)),
    usedBytes: sum(nodes.map((n) => n.usedBytes)),
    versionMismatch: peers.filter((p) => p.version && self.version && p.version !== self.version),
    idle: self.state === "idle" || self.role === "idle",
    hasApi: Boolean(api.url || api.port),
    apiAuth: api.auth === true,
    apiPort: num(api.port),
    inviteToken: typeof s.invite_token === "string" && s.invite_token ? s.invite_token : null,
    discovery: s.discovery && typeof s.discovery === "object" ? s.discovery : null,
    inviteTokenHidden: typeof s.invite_token_hidden === "string" ? s.invite_token_hidden : null,
    meshId: s.mesh_id ? str(s.mesh_id) : null,
    // This node's NAT as its peers observe it: its kind and the addresses they see.
    nat: isObj(s.nat)
      ? {
          type: str(s.nat.type),
          seen: arr(s.nat.addresses)
            .filter((a) => isObj(a) && a.kind !== "local")
            .map((a) => str(a.address)),
        }
      : null,
    engines: statusModels.filter((m) => m.local === true && isObj(m.slots)).map(engineView),
    inFlight: num(s.in_flight) ?? 0,
    requestsTotal: num(s.requests_total) ?? 0,
    // Of those, the ones this node's API sent on to a peer (a client node forwards them all).
    requestsForwarded: sum(statusModels.filter((m) => m.local === false).map((m) => num(m.requests))),
    uptimeS: num(s.uptime_s),
  };
}
