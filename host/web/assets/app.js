// labmesh web dashboard: one page, hash routes, live data over /ws.
// No build step and no dependencies: plain DOM and a small canvas plot.

const $ = (sel, el = document) => el.querySelector(sel);
const main = $('#main');
const WINDOW = 600; // points kept per plot

// ---------- helpers ----------
function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const k of kids.flat()) el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return el;
}
const fmtTime = (ts) => ts ? new Date(ts * 1000).toLocaleTimeString() : '—';
const ago = (ts) => ts ? `${Math.max(0, (Date.now() / 1000 - ts)).toFixed(1)} s ago` : '—';

function headers() {
  const t = localStorage.getItem('labmesh-token') || '';
  const hd = { 'content-type': 'application/json' };
  if (t) hd.authorization = 'Bearer ' + t;
  return hd;
}
async function api(path, opts = {}) {
  const r = await fetch(path, { headers: headers(), ...opts });
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    const e = new Error(body?.error?.message || `${r.status} ${r.statusText}`);
    e.status = r.status;
    throw e;
  }
  return body;
}
const post = (path, body) => api(path, { method: 'POST', body: JSON.stringify(body) });

// ---------- live connection ----------
const listeners = new Set();
let ws = null, watching = null;
function connect() {
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  ws = new WebSocket(`${proto}://${location.host}/ws`);
  const st = $('#ws-status');
  ws.onopen = () => {
    st.textContent = 'live'; st.className = 'pill on';
    if (watching) ws.send(JSON.stringify({ type: 'watch', relay_id: watching }));
  };
  ws.onclose = () => { st.textContent = 'offline'; st.className = 'pill off'; setTimeout(connect, 1000); };
  ws.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (_) { return; }
    if (m.type === 'drops') { $('#drops').textContent = `drops ${m.dropped}`; return; }
    for (const f of listeners) f(m);
  };
}
function watch(relay) {
  watching = relay;
  if (ws && ws.readyState === 1) ws.send(JSON.stringify(relay ? { type: 'watch', relay_id: relay } : { type: 'unwatch' }));
}

// ---------- plot ----------
// A rolling window of WINDOW points, one or more series: a number is one
// series; an object or array of numbers (a stream sample's value) is one
// series per numeric field (nested ones as `a.b`, array items as `[i]`; at
// most MAX_SERIES), with a legend. *pause* freezes it (new points are
// counted, not kept); zoom (buttons or the mouse wheel) shows the newest
// `span` seconds; *CSV* exports what is shown, one column per series.
const MAX_SERIES = 16;
const COLOURS = ['#2563eb', '#d9480f', '#2b8a3e', '#9c36b5', '#c92a2a', '#0b7285', '#e67700', '#5c7cfa'];
const SKIP_FIELDS = ['ts', 'last_updated', 'runs', 'seq', 't_wall', 't_mono'];
function numericFields(v, prefix = '', out = [], depth = 0) {
  if (typeof v === 'number') { if (isFinite(v)) out.push([prefix, v]); return out; }
  if (!v || typeof v !== 'object' || depth > 3) return out;
  const items = Array.isArray(v) ? v.map((x, i) => [`[${i}]`, x]) : Object.entries(v).filter(([k]) => !SKIP_FIELDS.includes(k)).map(([k, x]) => [prefix ? `.${k}` : k, x]);
  for (const [k, x] of items) { if (out.length >= MAX_SERIES) break; numericFields(x, prefix + k, out, depth + 1); }
  return out;
}
class Plot {
  // `unitOf(series)` gives a series' unit ('' for none).
  constructor(key, title, unitOf) {
    this.key = key; this.title = title; this.unitOf = typeof unitOf === 'function' ? unitOf : () => unitOf || '';
    this.cols = []; this.pts = []; this.paused = false; this.total = 0; this.span = null;
    this.canvas = h('canvas', { 'data-plot': key, 'data-points': '0', 'data-total': '0', 'data-visible': '0', 'data-span': 'all', 'data-paused': 'false', 'data-series': '', width: 800, height: 140 });
    this.label = h('span', { class: 'mono' }, '');
    this.legend = h('div', { class: 'legend', 'data-legend': key });
    const pause = h('button', { 'data-act': 'pause', onclick: () => { this.paused = !this.paused; pause.textContent = this.paused ? 'resume' : 'pause'; this.canvas.dataset.paused = String(this.paused); } }, 'pause');
    const btn = (act, text, title, fn) => h('button', { 'data-act': act, title, onclick: fn }, text);
    this.el = h('div', { class: 'plot', 'data-plot-box': key },
      h('div', { class: 'bar' }, h('strong', {}, title), this.label, h('span', { class: 'spacer' }),
        pause, btn('zoom-in', '+', 'zoom in (newest half)', () => this.zoom(0.5)), btn('zoom-out', '−', 'zoom out', () => this.zoom(2)),
        btn('zoom-reset', 'all', 'the whole window', () => { this.span = null; this.update(); }), btn('csv', 'CSV', 'export the points shown', () => this.csv())),
      this.canvas, this.legend);
    this.canvas.addEventListener('wheel', (ev) => { ev.preventDefault(); this.zoom(ev.deltaY < 0 ? 0.8 : 1.25); }, { passive: false });
  }
  // `v`: a number, or an object/array whose numeric fields are series.
  add(t, v) {
    const f = numericFields(v);
    if (!f.length || typeof t !== 'number') return;
    this.total++;
    this.canvas.dataset.total = String(this.total);
    if (this.paused) return;
    let grew = false;
    for (const [name] of f) if (!this.cols.includes(name) && this.cols.length < MAX_SERIES) { this.cols.push(name); grew = true; }
    const row = this.cols.map(() => null);
    for (const [name, x] of f) { const i = this.cols.indexOf(name); if (i >= 0) row[i] = x; }
    this.pts.push([t, row]);
    if (this.pts.length > WINDOW) this.pts.shift();
    this.canvas.dataset.points = String(this.pts.length);
    if (grew) {
      this.canvas.dataset.series = this.cols.join(',');
      this.legend.hidden = this.cols.length < 2;
      this.legend.replaceChildren(...this.cols.map((c, i) => h('span', { 'data-series-name': c }, h('i', { class: 'sw', style: `background:${COLOURS[i % COLOURS.length]}` }), h('span', {}, c || this.title), h('span', { class: 'mono mute', 'data-series-value': c }, ''))));
    }
    if (this.cols.length === 1) this.label.textContent = `${row[0].toPrecision(6)} ${this.unitOf(this.cols[0])}`;
    else for (const [name, x] of f) { const e = this.legend.querySelector(`[data-series-value="${CSS.escape(name)}"]`); if (e) e.textContent = ` ${x.toPrecision(6)} ${this.unitOf(name)}`; }
    this.update();
  }
  // The points shown: the newest `span` seconds, or all.
  view() {
    const p = this.pts;
    if (this.span === null || !p.length) return p;
    const t1 = p[p.length - 1][0];
    return p.filter(([t]) => t >= t1 - this.span);
  }
  zoom(f) {
    const p = this.pts;
    if (p.length < 2) return;
    const full = p[p.length - 1][0] - p[0][0];
    let s = (this.span ?? full) * f;
    this.span = s >= full ? null : Math.max(s, 0.01);
    this.update();
  }
  update() {
    this.canvas.dataset.visible = String(this.view().length);
    this.canvas.dataset.span = this.span === null ? 'all' : this.span.toFixed(3);
    this.dirty = true;
  }
  draw() {
    if (!this.dirty) return; this.dirty = false;
    const c = this.canvas, g = c.getContext('2d'), W = c.width, H = c.height, p = this.view();
    g.clearRect(0, 0, W, H);
    if (p.length < 1) return;
    let lo = Infinity, hi = -Infinity;
    for (const [, row] of p) for (const v of row) if (v !== null && v !== undefined) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!isFinite(lo)) return;
    if (hi - lo < 1e-12) { hi += 0.5; lo -= 0.5; }
    const t0 = p[0][0], t1 = Math.max(p[p.length - 1][0], t0 + 1e-6);
    const x = (t) => 40 + (W - 50) * (t - t0) / (t1 - t0), y = (v) => H - 14 - (H - 24) * (v - lo) / (hi - lo);
    g.strokeStyle = '#dde1e7'; g.fillStyle = '#6b7585'; g.font = '11px sans-serif';
    for (const v of [lo, (lo + hi) / 2, hi]) { g.beginPath(); g.moveTo(40, y(v)); g.lineTo(W - 10, y(v)); g.stroke(); g.fillText(v.toPrecision(4), 2, y(v) + 4); }
    g.fillText(`${(t1 - t0).toFixed(1)} s${this.paused ? ' · paused' : ''}`, W - 90, H - 2);
    g.lineWidth = 1.5;
    this.cols.forEach((_, i) => {
      g.strokeStyle = COLOURS[i % COLOURS.length]; g.beginPath();
      let pen = false;
      for (const [t, row] of p) {
        const v = row[i];
        if (v === null || v === undefined) { pen = false; continue; }
        if (pen) g.lineTo(x(t), y(v)); else { g.moveTo(x(t), y(v)); pen = true; }
      }
      g.stroke();
    });
  }
  csvText() {
    const clean = (s) => s.replace(/[^\w.:\[\]-]/g, '_');
    const head = this.cols.map((c) => { const u = this.unitOf(c).replace(/[^\w]/g, ''); return clean(c ? `${this.title}.${c}` : this.title) + (u ? `_${u}` : ''); });
    const cell = (v) => (v === null || v === undefined ? '' : String(v));
    return ['time_unix_s,' + head.join(','), ...this.view().map(([t, row]) => [t, ...this.cols.map((_, i) => cell(row[i]))].join(','))].join('\n') + '\n';
  }
  csv() {
    const a = h('a', { href: URL.createObjectURL(new Blob([this.csvText()], { type: 'text/csv' })), download: this.key.replace(/[^\w.-]/g, '_') + '.csv' });
    document.body.append(a); a.click(); a.remove();
  }
}
const plots = new Map();
(function frame() { for (const p of plots.values()) p.draw(); requestAnimationFrame(frame); })();

// ---------- pages ----------
let cleanup = () => {};
function page(fn) { cleanup(); cleanup = () => {}; listeners.clear(); plots.clear(); main.replaceChildren(); return fn(); }

// ---------- presence timeline ----------
// One lane per relay/bank, time on x (the newest `win` seconds), coloured
// segments online / stale / offline. Built from the web node's presence
// events (`timeline`, then live `presence` messages), the directory's
// status at each refresh (which is also the state before the first event:
// a node listed with no event was there since the web node started) and
// `stale` as the directory reports it. Before the web node started, or
// before a node's first `online` event, the lane is empty (unknown).
const SVGNS = 'http://www.w3.org/2000/svg';
function s(tag, attrs = {}, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const k of kids.flat()) el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return el;
}
const fmtExact = (ts) => { const d = new Date(ts * 1000); return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0'); };
const fmtDur = (s) => s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${Math.floor(s / 60)} min${Math.round(s % 60) ? ` ${Math.round(s % 60)} s` : ''}` : `${(s / 3600).toFixed(1)} h`;
class Timeline {
  constructor() {
    this.win = 600; this.since = null; this.nodes = new Map(); // id -> {role, tr: [{t, status, why}]}
    this.skew = 0; // web node's clock minus ours
    this.svg = s('svg', { id: 'presence-timeline', 'data-window': String(this.win), width: '100%', height: 40 });
    const sel = h('select', { id: 'timeline-window', onchange: () => { this.win = Number(sel.value); this.draw(); } },
      [[60, '1 min'], [300, '5 min'], [600, '10 min'], [1800, '30 min'], [3600, '1 h']].map(([v, t]) => h('option', { value: v, selected: v === this.win ? '' : undefined }, t)));
    this.el = h('div', { class: 'tl' }, h('div', { class: 'bar' }, 'window ', sel,
      h('span', { class: 'legend' }, ['online', 'stale', 'offline', 'unknown'].map((k) => h('span', {}, h('i', { class: `sw tl-${k}` }), k)))), this.svg);
  }
  node(id, role) {
    if (!this.nodes.has(id)) { if (this.nodes.size >= 200) return null; this.nodes.set(id, { role, tr: [] }); }
    const n = this.nodes.get(id); if (role) n.role = role; return n;
  }
  // A transition at `t` to `status`; dropped when it changes nothing.
  mark(id, role, t, status, why) {
    const n = this.node(id, role); if (!n) return;
    let i = n.tr.length; while (i > 0 && n.tr[i - 1].t > t) i--;
    if (i > 0 && n.tr[i - 1].status === status) return;
    n.tr.splice(i, 0, { t, status, why });
    if (n.tr.length > 1000) n.tr.shift();
  }
  presence(p) { this.mark(p.id, p.role, p.ts, p.status === 'online' ? 'online' : 'offline', p.reason); }
  // The directory now (from /api/mesh).
  directory(m) {
    this.since = m.since; this.skew = m.now - Date.now() / 1000;
    for (const [list, role] of [[m.relays, 'relay'], [m.banks, 'bank']]) for (const n of list) {
      const k = this.node(n.id, role); if (!k) continue;
      // Listed, and no event since the web node started: there since then.
      if (!k.tr.length && n.status !== 'offline') this.mark(n.id, role, m.since, 'online', 'listed when the web node started');
      // Online <-> stale from the directory; offline and back only from
      // presence events (a refresh racing an event must not undo it).
      const cur = k.tr.length ? k.tr[k.tr.length - 1].status : null;
      if ((cur === 'online' || cur === 'stale') && (n.status === 'online' || n.status === 'stale')) this.mark(n.id, role, m.now, n.status, n.status === 'stale' ? 'no state for 3 intervals' : 'state again');
    }
  }
  draw() {
    const VW = Math.max(300, this.svg.clientWidth || 1000), now = Date.now() / 1000 + this.skew, t0 = now - this.win, L = 110, R = VW - 10, W = R - L;
    const x = (t) => L + W * (Math.min(Math.max(t, t0), now) - t0) / this.win;
    const ids = [...this.nodes.keys()].sort((a, b) => (this.nodes.get(a).role === 'bank') - (this.nodes.get(b).role === 'bank') || a.localeCompare(b));
    const lane = 20, H = 18 + lane * ids.length;
    this.svg.setAttribute('viewBox', `0 0 ${VW} ${H}`); this.svg.setAttribute('height', H); this.svg.dataset.window = String(this.win);
    const kids = [];
    for (let k = 0; k <= 5; k++) {
      const t = t0 + this.win * k / 5, xx = L + W * k / 5;
      kids.push(s('line', { x1: xx, x2: xx, y1: 0, y2: H - 14, class: 'tl-grid' }), s('text', { x: xx, y: H - 3, 'text-anchor': k === 0 ? 'start' : k === 5 ? 'end' : 'middle', class: 'tl-axis' }, k === 5 ? 'now' : `−${fmtDur(this.win - this.win * k / 5)}`));
    }
    ids.forEach((id, i) => {
      const n = this.nodes.get(id), y = 2 + i * lane, g = s('g', { 'data-lane': id, 'data-role': n.role, 'data-status': n.tr.length ? n.tr[n.tr.length - 1].status : 'unknown' });
      g.append(s('text', { x: 4, y: y + 13, class: 'tl-label' }, id));
      n.tr.forEach((tr, j) => {
        const to = j + 1 < n.tr.length ? n.tr[j + 1].t : now;
        if (to < t0) return;
        const x1 = x(tr.t), x2 = Math.max(x(to), x1 + 1);
        g.append(s('rect', { x: x1, y, width: x2 - x1, height: lane - 4, class: `tl-${tr.status}`, 'data-status': tr.status, 'data-from': tr.t.toFixed(3), 'data-to': j + 1 < n.tr.length ? to.toFixed(3) : 'now' },
          s('title', {}, `${id}: ${tr.status} from ${fmtExact(tr.t)} to ${j + 1 < n.tr.length ? fmtExact(to) : 'now'} (${fmtDur(to - tr.t)}) — ${tr.why}`)));
      });
      kids.push(g);
    });
    if (!ids.length) kids.push(s('text', { x: L, y: 14, class: 'tl-axis' }, 'no relays or banks seen yet'));
    this.svg.replaceChildren(...kids);
  }
}

async function meshPage() {
  watch(null);
  const relays = h('tbody', { id: 'relays' }), banks = h('tbody', { id: 'banks' }), tl = h('ul', { class: 'timeline', id: 'timeline' });
  const lanes = new Timeline();
  const head = (...c) => h('thead', {}, h('tr', {}, c.map((x) => h('th', {}, x))));
  main.append(
    h('div', { class: 'grid2' },
      h('div', { class: 'card' }, h('h2', {}, 'Relays'), h('table', {}, head('relay', 'status', 'last seen', 'endpoint'), relays)),
      h('div', { class: 'card' }, h('h2', {}, 'Banks'), h('table', {}, head('bank', 'status', 'last seen', 'retrieve'), banks))),
    h('div', { class: 'card' }, h('h2', {}, 'Presence timeline'), lanes.el,
      h('details', {}, h('summary', { class: 'mute' }, 'presence events (newest first)'), tl)));
  const seen = {};
  const row = (n, kind) => h('tr', { 'data-relay': kind === 'relay' ? n.id : undefined, 'data-bank': kind === 'bank' ? n.id : undefined },
    h('td', {}, kind === 'relay' ? h('a', { href: `#/relay/${encodeURIComponent(n.id)}` }, n.id) : n.id),
    h('td', {}, h('span', { class: `badge st-${n.status}`, 'data-status': n.status }, n.status)),
    h('td', { class: 'mono', 'data-last-seen': n.id }, ago(seen[n.id] || n.last_seen)),
    h('td', { class: 'mono mute' }, n.endpoint || ''));
  const tlItem = (p) => h('li', {}, h('span', { class: 'mono' }, fmtTime(p.ts)), ' ', h('strong', {}, p.id), ` (${p.role}) `, h('span', { class: `badge st-${p.status}` }, p.status), ` — ${p.reason}`);
  let first = true;
  async function refresh() {
    try {
      const m = await api('/api/mesh');
      if (first) { for (const p of m.timeline) lanes.presence(p); first = false; }
      lanes.directory(m); lanes.draw();
      relays.replaceChildren(...m.relays.map((n) => row(n, 'relay')));
      banks.replaceChildren(...m.banks.map((n) => row(n, 'bank')));
      tl.replaceChildren(...m.timeline.slice().reverse().slice(0, 50).map(tlItem));
      if (!m.timeline.length) tl.replaceChildren(h('li', { class: 'mute' }, 'no presence events since this web node started'));
    } catch (e) { relays.replaceChildren(h('tr', {}, h('td', { class: 'err' }, e.message))); }
  }
  listeners.add((m) => {
    if (m.type === 'state') { seen[m.relay_id] = m.ts || Date.now() / 1000; const c = $(`[data-last-seen="${CSS.escape(m.relay_id)}"]`); if (c) c.textContent = ago(seen[m.relay_id]); }
    if (m.type === 'presence') { tl.prepend(tlItem(m.presence)); if (!first) { lanes.presence(m.presence); lanes.draw(); } refresh(); }
  });
  await refresh();
  const t = setInterval(refresh, 2000), t2 = setInterval(() => lanes.draw(), 1000);
  cleanup = () => { clearInterval(t); clearInterval(t2); };
}

function paramInput(p) {
  const attrs = { name: p.name, title: `${p.type}${p.unit ? ' [' + p.unit + ']' : ''}${p.min !== undefined ? ' min ' + p.min : ''}${p.max !== undefined ? ' max ' + p.max : ''}` };
  if (p.type === 'bool') return h('select', attrs, h('option', { value: 'true' }, 'on'), h('option', { value: 'false' }, 'off'));
  if (p.type === 'float' || p.type === 'int') {
    Object.assign(attrs, { type: 'number', step: p.type === 'int' ? '1' : 'any' });
    if (p.min !== undefined) attrs.min = p.min;
    if (p.max !== undefined) attrs.max = p.max;
  }
  if (p.default !== undefined) attrs.placeholder = String(p.default);
  return h('input', attrs);
}
// The browser's check; the web node and the relay check again.
function readParams(form, m) {
  const params = {};
  for (const p of m.params || []) {
    const el = form.elements[p.name];
    el.classList.remove('bad');
    const raw = el.value;
    if (raw === '') { if (p.default === undefined) { el.classList.add('bad'); throw new Error(`${p.name} is required`); } continue; }
    let v = raw;
    if (p.type === 'float' || p.type === 'int') {
      v = Number(raw);
      const bad = !isFinite(v) || (p.type === 'int' && !Number.isInteger(v)) ? 'is not a number' : p.min !== undefined && v < p.min ? `is below the minimum ${p.min}` : p.max !== undefined && v > p.max ? `is above the maximum ${p.max}` : null;
      if (bad) { el.classList.add('bad'); throw new Error(`${p.name} ${bad}`); }
    } else if (p.type === 'bool') v = raw === 'true';
    else if (p.type === 'any') { try { v = JSON.parse(raw); } catch (_) { v = raw; } }
    params[p.name] = v;
  }
  return params;
}

// Setpoint vs measured, from the description's `state_fields`, derived
// from the published state itself, so every tab agrees whoever made the
// setting (this page, another browser, the CLI, Python):
// confirmed (the state reports the setting and its measurement agrees
// within tolerance), pending (the measurement is not there yet but the
// setting changed, or the measurement got closer to it, within the settle
// time; or a setting asked from this page is not reported yet), mismatch
// (no progress for the settle time), stale (no fresh state), off (the
// measurement is not compared while e.g. `output` is false).
const same = (a, b) => (typeof a === 'number' && typeof b === 'number') ? Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b)) : a === b;
function isStale(st) {
  if (!st) return true;
  if (st.stale) return true;
  const iv = st.interval || 1;
  return st.ts ? Date.now() / 1000 - st.ts > Math.max(3 * iv, 2) : false;
}
// Per setting, from each state: the setting, the closest the measurement
// came to it since it changed, and when it last came closer (or the
// setting changed, or comparing resumed). A tab opened mid-ramp starts
// here, so it shows pending, not mismatch, while the ramp goes on.
function track(tr, f, meas, st) {
  const now = Date.now() / 1000, cur = st.state[f.name];
  const mv = meas ? st.state[meas.name] : undefined;
  const dist = typeof cur === 'number' && typeof mv === 'number' ? Math.abs(mv - cur) : null;
  const off = meas?.active_when && st.state[meas.active_when] === false;
  const t = tr[f.name];
  if (!t || !same(t.set, cur) || off || st.stale) { tr[f.name] = { set: cur, best: off ? null : dist, at: now }; return; }
  const eps = Math.max((meas?.tolerance || 0) / 10, 1e-9);
  if (dist !== null && (t.best === null || dist < t.best - eps)) { t.best = dist; t.at = now; }
}
function indicator(f, meas, st, requested, tr) {
  const now = Date.now() / 1000;
  const settle = Math.max(2, 3 * (st?.interval || 0.5));
  if (!st || isStale(st)) return ['stale', 'no fresh state from the relay'];
  const cur = st.state[f.name];
  const req = requested[f.name];
  if (req) {
    if (!same(cur, req.value)) {
      return now - req.at < settle ? ['pending', `asked ${req.value}, the instrument still reports ${cur}`] : ['mismatch', `asked ${req.value} ${((now - req.at)).toFixed(0)} s ago, the instrument reports ${cur}`];
    }
    delete requested[f.name];
  }
  if (!meas) return ['confirmed', 'the instrument reports this setting'];
  if (meas.active_when && st.state[meas.active_when] === false) return ['off', `${meas.active_when} is off: not compared`];
  const mv = st.state[meas.name];
  if (typeof mv !== 'number' || typeof cur !== 'number') return ['stale', `no measurement in ${meas.name}`];
  const tol = meas.tolerance || 0;
  if (Math.abs(mv - cur) <= tol) return ['confirmed', `measured ${mv} within ±${tol} of ${cur}`];
  const t = tr[f.name];
  return t && now - t.at < settle ? ['pending', `settling: measured ${mv}, set ${cur}`] : ['mismatch', `measured ${mv} differs from the setting ${cur} by more than ±${tol}, no closer for ${t ? (now - t.at).toFixed(0) : '?'} s`];
}

async function relayPage(id) {
  watch(id);
  const d = await api(`/api/relays/${encodeURIComponent(id)}`);
  const stateBody = h('tbody', { id: 'state' });
  const result = h('div', { id: 'call-result', class: 'mute' }, 'no call yet');
  const statePlots = h('div', { id: 'state-plots' }), streamPlots = h('div', { id: 'stream-plots' });
  const lease = h('div', { id: 'lease' }, '…');
  const streamsTbl = h('tbody', { id: 'streams' });
  const spBody = h('tbody', { id: 'setpoints' });
  const fields = d.state_fields || [];
  const fieldBy = Object.fromEntries(fields.map((f) => [f.name, f]));
  const setpoints = fields.filter((f) => f.set_by);
  const measOf = {};
  for (const f of fields) if (f.measures) measOf[f.measures] = f;
  const requested = {}, settling = {};
  let last = d.state;
  // Units: the description's state fields, else a parameter of that name.
  const units = {};
  for (const m of d.methods) for (const p of m.params || []) if (p.unit) units[p.name] = p.unit;
  const unitOf = (k) => fieldBy[k]?.unit ?? units[k] ?? '';
  // This tab's lease on the relay (the web node holds none for anybody).
  const leaseKey = 'labmesh-lease:' + id;
  let mine = null;
  try { mine = JSON.parse(sessionStorage.getItem(leaseKey) || 'null'); } catch (_) { mine = null; }
  const keep = (l) => { mine = l; if (l) sessionStorage.setItem(leaseKey, JSON.stringify(l)); else sessionStorage.removeItem(leaseKey); };
  const leased = (body) => (mine ? { ...body, lease: mine.token } : body);
  const fail = (e) => { result.className = 'err'; result.dataset.code = String(e.status || ''); result.textContent = e.message; };

  const forms = d.methods.map((m) => {
    const f = h('form', { class: 'call', 'data-method': m.name },
      h('span', { class: 'm' }, m.name), ...(m.params || []).map((p) => h('label', {}, `${p.name}${p.unit ? ' [' + p.unit + ']' : ''}${p.min !== undefined || p.max !== undefined ? ` (${p.min ?? '−∞'}…${p.max ?? '∞'})` : ''} `, paramInput(p))),
      h('button', { class: m.read_only ? '' : 'primary', type: 'submit' }, m.read_only ? 'read' : 'call'), h('span', { class: 'mute' }, m.doc || ''));
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const params = readParams(f, m);
        result.className = 'mute'; delete result.dataset.code; delete result.dataset.method; result.textContent = `calling ${m.name}…`;
        const r = await post(`/api/relays/${encodeURIComponent(id)}/call`, leased({ method: m.name, params }));
        result.className = ''; result.dataset.method = m.name; result.textContent = JSON.stringify(r.result, null, 1);
        // A setting asked for: pending until the state reports it.
        const first = (m.params || [])[0]?.name;
        for (const sp of setpoints) if (sp.set_by === m.name && first in params) requested[sp.name] = { value: params[first], at: Date.now() / 1000 };
        showSetpoints();
      } catch (e) { fail(e); }
    });
    return f;
  });
  main.append(
    h('div', { class: 'card' }, h('h2', {}, id, ' ', h('span', { class: 'mute' }, `${d.driver}${d.identity ? ' — ' + d.identity : ''}`))),
    h('div', { class: 'grid2' },
      h('div', { class: 'card' }, h('h2', {}, 'Live state ', h('span', { id: 'state-meta', class: 'mute mono' }, '')), h('table', {}, stateBody),
        setpoints.length ? h('div', {}, h('h2', { style: 'margin-top:12px' }, 'Setpoint vs measured'),
          h('table', {}, h('thead', {}, h('tr', {}, ['setting', 'set', 'measured', ''].map((x) => h('th', {}, x)))), spBody)) : ''),
      h('div', { class: 'card' }, h('h2', {}, 'Call'), ...forms, result)),
    h('div', { class: 'grid2' },
      h('div', { class: 'card' }, h('h2', {}, 'State plots'), statePlots),
      h('div', { class: 'card' }, h('h2', {}, 'Stream plots'), streamPlots)),
    h('div', { class: 'grid2' },
      h('div', { class: 'card' }, h('h2', {}, 'Streams'), h('table', {}, h('thead', {}, h('tr', {}, ['stream', 'method', 'Hz', 'actual', 'samples', ''].map((x) => h('th', {}, x)))), streamsTbl)),
      h('div', { class: 'card' }, h('h2', {}, 'Lease'), lease)));

  const fmt = (v) => v === undefined ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v);
  // One row per setting, made once and updated in place.
  const spRows = setpoints.map((f) => {
    const set = h('td', { class: 'num', 'data-set': f.name }), measured = h('td', { class: 'num', 'data-measured': f.name }, '—');
    const badge = h('span', { class: 'badge' });
    spBody.append(h('tr', { 'data-setpoint': f.name }, h('th', {}, f.name), set, measured, h('td', {}, badge)));
    return { f, set, measured, badge };
  });
  function showSetpoints() {
    for (const { f, set, measured, badge } of spRows) {
      const meas = measOf[f.name];
      const [ind, why] = indicator(f, meas, last, requested, settling);
      set.textContent = `${fmt(last?.state?.[f.name])} ${unitOf(f.name)}`.trim();
      if (meas) measured.textContent = `${fmt(last?.state?.[meas.name])} ${unitOf(meas.name)}`.trim();
      if (badge.dataset.indicator !== ind) { badge.dataset.indicator = ind; badge.className = `badge ind-${ind}`; badge.textContent = ind; }
      badge.title = why;
    }
  }
  function showState(s) {
    if (!s || typeof s.state !== 'object' || s.state === null) return;
    for (const f of setpoints) track(settling, f, measOf[f.name], s);
    last = s;
    $('#state-meta').textContent = `seq ${s.seq ?? '—'} · ${fmtTime(s.ts)}${s.stale ? ' · stale' : ''}`;
    const rows = [];
    for (const [k, v] of Object.entries(s.state)) {
      rows.push(h('tr', {}, h('th', {}, k), h('td', { class: 'num', 'data-field': k }, fmt(v)), h('td', { class: 'mute' }, unitOf(k))));
      if (typeof v === 'number' && !['ts', 'last_updated', 'runs', 'seq'].includes(k)) {
        const key = 'state:' + k;
        if (!plots.has(key)) { const p = new Plot(key, k, () => unitOf(k)); plots.set(key, p); statePlots.append(p.el); }
        plots.get(key).add(s.ts || Date.now() / 1000, v);
      }
    }
    stateBody.replaceChildren(...rows);
    showSetpoints();
  }
  showState(d.state);
  listeners.add((m) => {
    if (m.type === 'state' && m.relay_id === id) showState(m);
    if (m.type === 'lock' && m.lock?.relay_id === id) loadLease();
    if (m.type === 'sample' && m.relay_id === id && m.ok) {
      const key = 'stream:' + m.stream;
      // Every numeric field of the sample's value is a series; a field
      // named like a state field gets its unit.
      if (!plots.has(key)) { const p = new Plot(key, m.stream, (c) => unitOf(c.split('.').pop())); plots.set(key, p); streamPlots.append(p.el); }
      plots.get(key).add(m.t_wall, m.value);
    }
  });

  async function loadStreams() {
    try {
      const s = await api(`/api/relays/${encodeURIComponent(id)}/streams`);
      streamsTbl.replaceChildren(...s.streams.map((st) => {
        const sp = st.spec ?? st; // lm.streams flattens the spec into each entry
        const hz = h('input', { type: 'number', step: 'any', min: '0', value: sp.hz, style: 'width:70px' });
        const ctl = (body) => post(`/api/relays/${encodeURIComponent(id)}/streams/${encodeURIComponent(sp.name)}`, leased(body)).then(loadStreams, fail);
        return h('tr', { 'data-stream': sp.name }, h('td', {}, sp.name), h('td', { class: 'mono' }, sp.method), h('td', {}, hz),
          h('td', { class: 'num' }, st.actual_hz.toFixed(1)), h('td', { class: 'num' }, st.samples),
          h('td', {}, h('button', { onclick: () => ctl({ hz: Number(hz.value) }) }, 'set Hz'), ' ',
            h('button', { 'data-action': sp.enabled === false ? 'enable' : 'disable', onclick: () => ctl({ enabled: sp.enabled === false }) }, sp.enabled === false ? 'enable' : 'disable')));
      }));
      if (!s.streams.length) streamsTbl.replaceChildren(h('tr', {}, h('td', { class: 'mute' }, 'no streams')));
    } catch (e) { streamsTbl.replaceChildren(h('tr', {}, h('td', { class: 'err' }, e.message))); }
  }
  async function loadLease() {
    try {
      const l = await api(`/api/relays/${encodeURIComponent(id)}/lease`);
      if (!l.supported) { lease.replaceChildren(h('span', { class: 'mute', 'data-lease': 'unsupported' }, 'leases not supported by this relay')); return; }
      const held = l.lease || null;
      // Our lease ended (released elsewhere, expired, forced): forget it.
      if (mine && (!held || held.holder !== mine.holder || Math.abs((held.since ?? 0) - (mine.since ?? 0)) > 1e-6)) keep(null);
      const left = held?.expires ? Math.max(0, held.expires - Date.now() / 1000) : null;
      const who = held ? `held by ${held.holder}${mine ? ' (this browser)' : ''}${left !== null ? `, ${left.toFixed(0)} s left` : ''}` : 'free';
      const ttl = h('input', { type: 'number', value: '60', min: '1', style: 'width:60px' });
      const take = async () => {
        try { const r = await post(`/api/relays/${encodeURIComponent(id)}/lease`, { action: 'lock', params: { ttl_s: Number(ttl.value) } }); if (r.result?.token !== undefined) keep({ token: r.result.token, holder: r.result.holder, since: r.result.since }); else if (r.supported === false) fail(new Error(r.message)); } catch (e) { fail(e); }
        loadLease();
      };
      const release = async () => {
        try { if (mine) await post(`/api/relays/${encodeURIComponent(id)}/lease`, { action: 'unlock', params: { token: mine.token } }); keep(null); } catch (e) { fail(e); }
        loadLease();
      };
      lease.replaceChildren(h('div', { 'data-lease': held ? 'held' : 'free', 'data-mine': String(!!mine), 'data-holder': held?.holder ?? '' }, who), h('div', {},
        'ttl s ', ttl, ' ',
        h('button', { 'data-act': 'take', onclick: take, disabled: held ? '' : undefined }, 'take'), ' ',
        h('button', { 'data-act': 'release', onclick: release, disabled: mine ? undefined : '' }, 'release')));
    } catch (e) { lease.replaceChildren(h('span', { class: 'err' }, e.message)); }
  }
  loadStreams(); loadLease();
  const t = setInterval(() => { loadStreams(); loadLease(); }, 5000);
  // Pending turns into mismatch (and fresh into stale) with time alone.
  const t2 = setInterval(showSetpoints, 500);
  cleanup = () => { clearInterval(t); clearInterval(t2); };
}

async function datasetsPage() {
  watch(null);
  const body = h('tbody', { id: 'datasets' });
  const f = h('form', { class: 'filters' },
    h('label', {}, 'relay ', h('input', { name: 'relay_id', size: 12 })),
    h('label', {}, 'since ', h('input', { name: 'since', type: 'datetime-local' })),
    h('label', {}, 'until ', h('input', { name: 'until', type: 'datetime-local' })),
    h('label', {}, 'meta ', h('input', { name: 'meta', placeholder: 'key=value', size: 14 })),
    h('button', { type: 'submit', class: 'primary' }, 'filter'));
  main.append(h('div', { class: 'card' }, h('h2', {}, 'Datasets'), f,
    h('table', {}, h('thead', {}, h('tr', {}, ['dataset', 'relay', 'bank', 'created', 'size', 'sha256', ''].map((x) => h('th', {}, x)))), body)));
  async function load() {
    const q = new URLSearchParams();
    const v = (n) => f.elements[n].value;
    if (v('relay_id')) q.set('relay_id', v('relay_id'));
    for (const k of ['since', 'until']) if (v(k)) q.set(k, String(new Date(v(k)).getTime() / 1000));
    if (v('meta').includes('=')) { const [k, ...rest] = v('meta').split('='); q.set('meta.' + k.trim(), rest.join('=').trim()); }
    try {
      const r = await api('/api/datasets?' + q);
      body.replaceChildren(...r.datasets.map((d) => h('tr', { 'data-dataset': d.dataset_id },
        h('td', { class: 'mono' }, d.dataset_id), h('td', {}, d.relay_id), h('td', {}, d.bank_id), h('td', {}, new Date(d.created * 1000).toLocaleString()),
        h('td', { class: 'num' }, d.size.toLocaleString()), h('td', { class: 'mono', title: d.sha256 }, d.sha256.slice(0, 16) + '…'),
        h('td', {}, h('a', { href: `/api/datasets/${encodeURIComponent(d.bank_id)}/${encodeURIComponent(d.dataset_id)}`, download: d.dataset_id, 'data-download': d.dataset_id }, 'download')))));
      if (!r.datasets.length) body.replaceChildren(h('tr', {}, h('td', { class: 'mute' }, 'no datasets')));
    } catch (e) { body.replaceChildren(h('tr', {}, h('td', { class: 'err' }, e.message))); }
  }
  f.addEventListener('submit', (ev) => { ev.preventDefault(); load(); });
  listeners.add((m) => { if (m.type === 'dataset') load(); });
  await load();
}

function route() {
  const hash = location.hash || '#/mesh';
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', hash.startsWith(a.getAttribute('href')));
  const m = hash.match(/^#\/relay\/(.+)$/);
  const run = m ? () => relayPage(decodeURIComponent(m[1])) : hash.startsWith('#/datasets') ? datasetsPage : meshPage;
  page(run)?.catch?.((e) => main.replaceChildren(h('div', { class: 'card err' }, e.message)));
}

const tok = $('#token');
tok.value = localStorage.getItem('labmesh-token') || '';
tok.addEventListener('change', () => localStorage.setItem('labmesh-token', tok.value));
window.addEventListener('hashchange', route);
connect();
route();
