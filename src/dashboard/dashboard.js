// agentnet's operator dashboard. Live aggregates arrive as server-sent events from
// /dashboard/live (the services' own metrics); per-host detail, the last events and the
// actions come from the relay's admin endpoints with the operator's token. Every value from
// the network is written as text (textContent), never as markup.
'use strict';

const HISTORY = 120; // seconds of charts
const HOSTS_EVERY_MS = 2000;
const EVENTS_KEPT = 12;
const COLOURS = ['#2f7ed8', '#e4572e', '#17a589', '#9b59b6', '#f1c40f', '#7f8c8d', '#d35400', '#16a085'];

const $ = (id) => document.getElementById(id);
const snaps = [];
const rates = { events: [[], []], index: [[], []], drops: new Map() };
let token = sessionStorage.getItem('agentnet-admin-token') || '';
let hostsTimer = null;
let eventsSocket = null;
let lastHosts = new Map();

// ---- reading a snapshot -------------------------------------------------------------

function series(snap, svc, name) {
  return (snap && snap[svc] && snap[svc][name]) || [];
}

function matches(labels, want) {
  return Object.entries(want || {}).every(([k, v]) => labels[k] === v);
}

function total(snap, svc, name, want) {
  return series(snap, svc, name)
    .filter((s) => matches(s.l, want))
    .reduce((a, s) => a + s.v, 0);
}

function byLabel(snap, svc, name, label) {
  const out = new Map();
  for (const s of series(snap, svc, name)) {
    const k = s.l[label];
    out.set(k, (out.get(k) || 0) + s.v);
  }
  return out;
}

function seconds(a, b) {
  return Math.max((b.at - a.at) / 1000, 0.001);
}

// Per second over the last interval (or 0 before there are two snapshots).
function rate(svc, name, want) {
  if (snaps.length < 2) return 0;
  const [a, b] = snaps.slice(-2);
  return Math.max(total(b, svc, name, want) - total(a, svc, name, want), 0) / seconds(a, b);
}

// A histogram's quantile over the last few seconds (all time when nothing happened then),
// from its cumulative buckets: the upper bound of the first bucket holding q of the calls.
function quantile(svc, base, want, q) {
  const now = snaps[snaps.length - 1];
  const then = snaps.length > 5 ? snaps[snaps.length - 6] : null;
  const buckets = (snap) => {
    const m = new Map();
    for (const s of series(snap, svc, base + '_bucket')) {
      if (!matches(s.l, want)) continue;
      const le = s.l.le === '+Inf' ? Infinity : Number(s.l.le);
      m.set(le, (m.get(le) || 0) + s.v);
    }
    return m;
  };
  const b = buckets(now);
  const a = then ? buckets(then) : new Map();
  let les = [...b.keys()].sort((x, y) => x - y);
  let delta = les.map((le) => b.get(le) - (a.get(le) || 0));
  if (!les.length) return null;
  if (delta[delta.length - 1] <= 0) delta = les.map((le) => b.get(le));
  const count = delta[delta.length - 1];
  if (count <= 0) return null;
  for (let i = 0; i < les.length; i++) {
    if (delta[i] >= q * count) return les[i];
  }
  return les[les.length - 1];
}

function mean(svc, base, want) {
  if (snaps.length < 2) return null;
  const [a, b] = [snaps[Math.max(snaps.length - 6, 0)], snaps[snaps.length - 1]];
  const count = total(b, svc, base + '_count', want) - total(a, svc, base + '_count', want);
  const sum = total(b, svc, base + '_sum', want) - total(a, svc, base + '_sum', want);
  if (count > 0) return sum / count;
  const all = total(b, svc, base + '_count', want);
  return all > 0 ? total(b, svc, base + '_sum', want) / all : null;
}

// ---- formatting ---------------------------------------------------------------------

function int(n) {
  return Math.round(n).toLocaleString('en');
}

// 10,000,000 as 10M: for settings and totals that need no precision.
function compact(n) {
  return new Intl.NumberFormat('en', { notation: 'compact', maximumFractionDigits: 1 }).format(n);
}

function perSec(n) {
  return n >= 100 ? int(n) : n.toFixed(1);
}

function secs(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return '–';
  if (s === Infinity) return '> 30 s';
  if (s < 0.001) return (s * 1e6).toFixed(0) + ' µs';
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + ' ms';
  return s.toFixed(1) + ' s';
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

function set(id, text) {
  const e = $(id);
  if (e && e.textContent !== text) e.textContent = text;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.appendChild(c instanceof Node ? wrapCell(c) : el('td', c));
  return tr;
}

function wrapCell(node) {
  const td = document.createElement('td');
  td.appendChild(node);
  return td;
}

function fill(tableId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
}

// ---- charts -------------------------------------------------------------------------

function push(arr, v) {
  arr.push(v);
  if (arr.length > HISTORY) arr.shift();
}

function chart(id, lines) {
  const c = $(id);
  const g = c.getContext('2d');
  const w = c.width, h = c.height, pad = 4, top = 16;
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...lines.flatMap((l) => l.values));
  g.strokeStyle = '#ddd';
  g.lineWidth = 1;
  g.beginPath();
  g.moveTo(0, h - pad); g.lineTo(w, h - pad);
  g.moveTo(0, top); g.lineTo(w, top);
  g.stroke();
  g.fillStyle = '#666';
  g.font = '11px sans-serif';
  g.fillText(perSec(max) + ' / s', 4, 11);
  lines.forEach((l, i) => {
    g.strokeStyle = l.colour || COLOURS[i % COLOURS.length];
    g.lineWidth = 1.5;
    g.beginPath();
    l.values.forEach((v, x) => {
      const px = w - (l.values.length - 1 - x) * (w / (HISTORY - 1));
      const py = h - pad - (v / max) * (h - pad - top);
      if (x === 0) g.moveTo(px, py); else g.lineTo(px, py);
    });
    g.stroke();
  });
}

// ---- rendering ----------------------------------------------------------------------

function render() {
  const s = snaps[snaps.length - 1];
  $('relay').hidden = !s.relay;
  $('indexer').hidden = !s.indexer;
  $('appview').hidden = !s.appview;
  $('link-index').hidden = !s.appview;
  if (s.relay) renderRelay(s);
  if (s.indexer) renderIndexer(s);
  if (s.appview) renderAppview(s);
}

function renderRelay(s) {
  const inRate = rate('relay', 'relay_events_in_total');
  const outRate = rate('relay', 'relay_events_out_total');
  push(rates.events[0], inRate);
  push(rates.events[1], outRate);
  set('relay-in-rate', perSec(inRate));
  set('relay-out-rate', perSec(outRate));
  set('relay-out', int(total(s, 'relay', 'relay_events_out_total')));
  set('relay-head', int(total(s, 'relay', 'relay_head_seq')));
  set('relay-dropped', int(total(s, 'relay', 'relay_events_dropped_total')));
  set('relay-subscribers', int(total(s, 'relay', 'relay_subscribers')));
  set('relay-slow', int(total(s, 'relay', 'relay_slow_consumers_total')));
  set('relay-dead', int(total(s, 'relay', 'relay_dead_subscribers_total')));
  set('relay-log', int(total(s, 'relay', 'relay_log_events')));
  set('relay-log-bytes', bytes(total(s, 'relay', 'relay_log_bytes')));
  set('relay-retention', compact(total(s, 'relay', 'relay_log_retention_events')) + ' · ' +
    int(total(s, 'relay', 'relay_log_retention_hours')) + ' h');
  set('relay-verify', secs(quantile('relay', 'relay_verify_seconds', {}, 0.99)));
  set('relay-fsync', secs(quantile('relay', 'relay_log_write_seconds', {}, 0.99)));
  set('relay-identity', secs(quantile('relay', 'relay_identity_resolve_seconds', {}, 0.99)) + ' · ' +
    int(total(s, 'relay', 'relay_identity_failures_total')));
  set('relay-host-lag', secs(quantile('relay', 'relay_host_lag_seconds', {}, 0.99)));
  set('relay-queues', int(total(s, 'relay', 'relay_verify_queue_depth')) + ' · ' +
    int(total(s, 'relay', 'relay_sequencer_queue_depth')));
  chart('chart-events', [{ values: rates.events[0] }, { values: rates.events[1] }]);

  const drops = byLabel(s, 'relay', 'relay_events_dropped_total', 'reason');
  const rows = [];
  const lines = [];
  let i = 0;
  for (const [reason, n] of [...drops.entries()].sort()) {
    const r = rate('relay', 'relay_events_dropped_total', { reason });
    if (!rates.drops.has(reason)) rates.drops.set(reason, []);
    push(rates.drops.get(reason), r);
    if (n > 0) {
      rows.push(row([reason, int(n), perSec(r)]));
      lines.push({ values: rates.drops.get(reason), colour: COLOURS[i % COLOURS.length], reason });
      i++;
    }
  }
  if (!rows.length) rows.push(row(['nothing dropped', '', '']));
  fill('drops', rows);
  chart('chart-drops', lines);
  $('drops-legend').replaceChildren(...lines.map((l) => {
    const k = el('i', l.reason);
    k.style.borderColor = l.colour;
    return k;
  }));
}

function renderIndexer(s) {
  const lag = total(s, 'indexer', 'indexer_lag_seconds');
  const last = total(s, 'indexer', 'indexer_last_seq');
  set('indexer-lag', last > 0 ? secs(lag) : '–');
  set('indexer-lag-seq', s.relay ? int(Math.max(total(s, 'relay', 'relay_head_seq') - last, 0)) : int(last));
  const rowsRate = rate('indexer', 'indexer_rows_total');
  const vectorsRate = rate('indexer', 'indexer_vectors_total');
  push(rates.index[0], rowsRate);
  push(rates.index[1], vectorsRate);
  set('indexer-rows-rate', perSec(rowsRate));
  set('indexer-vectors-rate', perSec(vectorsRate));
  set('indexer-rows', int(total(s, 'indexer', 'indexer_rows_total')));
  set('indexer-vectors', int(total(s, 'indexer', 'indexer_vectors_total')));
  set('indexer-embed-rate', perSec(rate('indexer', 'indexer_embed_batch_texts_sum')));
  const batch = mean('indexer', 'indexer_embed_batch_texts', {});
  set('indexer-embed-batch', batch === null ? '–' : batch.toFixed(1));
  set('indexer-embed-p99', secs(quantile('indexer', 'indexer_embed_seconds', {}, 0.99)));
  set('indexer-failed', int(total(s, 'indexer', 'indexer_failed_batches_total')));
  chart('chart-index', [{ values: rates.index[0] }, { values: rates.index[1] }]);
  const skips = byLabel(s, 'indexer', 'indexer_skipped_total', 'reason');
  fill('skips', [...skips.entries()].sort().map(([reason, n]) =>
    row([reason, int(n), perSec(rate('indexer', 'indexer_skipped_total', { reason }))])));
}

function renderAppview(s) {
  set('appview-rate', perSec(rate('appview', 'appview_requests_total')));
  set('appview-requests', int(total(s, 'appview', 'appview_requests_total')));
  set('appview-auth', int(total(s, 'appview', 'appview_auth_failures_total')));
  set('appview-live', int(total(s, 'appview', 'appview_live_subscribers')));
  const queries = byLabel(s, 'appview', 'appview_requests_total', 'query');
  fill('queries', [...queries.entries()].filter(([, n]) => n > 0).sort().map(([query, n]) => {
    const failed = series(s, 'appview', 'appview_requests_total')
      .filter((x) => x.l.query === query && !String(x.l.status).startsWith('2'))
      .reduce((a, x) => a + x.v, 0);
    return row([query, int(n), perSec(rate('appview', 'appview_requests_total', { query })), int(failed),
      secs(mean('appview', 'appview_request_seconds', { query })),
      secs(quantile('appview', 'appview_request_seconds', { query }, 0.99))]);
  }));
  const auth = byLabel(s, 'appview', 'appview_auth_failures_total', 'reason');
  fill('auth', [...auth.entries()].filter(([, n]) => n > 0).sort().map(([reason, n]) => row([reason, int(n)])));
}

// ---- the live stream ----------------------------------------------------------------

function connect() {
  const source = new EventSource('/dashboard/live');
  source.addEventListener('open', () => {
    set('connection', 'live');
    $('connection').className = 'pill live';
  });
  source.addEventListener('error', () => {
    set('connection', 'reconnecting…');
    $('connection').className = 'pill down';
  });
  source.addEventListener('stats', (e) => {
    snaps.push(JSON.parse(e.data));
    if (snaps.length > 8) snaps.shift();
    render();
  });
}

// ---- the operator's part ------------------------------------------------------------

async function admin(path, body) {
  const init = { headers: { Authorization: 'Bearer ' + token } };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const why = (json && (json.message || json.error)) || text || res.statusText;
    const err = new Error(why);
    err.status = res.status;
    throw err;
  }
  return json;
}

async function signIn(given) {
  token = given;
  try {
    const answer = await admin('/admin/hosts');
    sessionStorage.setItem('agentnet-admin-token', token);
    set('signin-state', 'operator');
    $('signin-token').value = '';
    $('signin-token').hidden = true;
    $('signin').hidden = true;
    $('signout').hidden = false;
    $('admin').hidden = false;
    $('anonymous-note').hidden = true;
    renderHosts(answer.hosts);
    clearInterval(hostsTimer);
    hostsTimer = setInterval(refreshHosts, HOSTS_EVERY_MS);
    watchEvents();
  } catch (e) {
    token = '';
    sessionStorage.removeItem('agentnet-admin-token');
    set('signin-state', e.status === 401 ? 'token refused' : 'admin unavailable: ' + e.message);
  }
}

function signOut() {
  token = '';
  sessionStorage.removeItem('agentnet-admin-token');
  clearInterval(hostsTimer);
  if (eventsSocket) eventsSocket.close();
  eventsSocket = null;
  $('admin').hidden = true;
  $('anonymous-note').hidden = false;
  $('signin-token').hidden = false;
  $('signin').hidden = false;
  $('signout').hidden = true;
  set('signin-state', '');
  fill('hosts', []);
  fill('events', []);
}

async function refreshHosts() {
  try {
    renderHosts((await admin('/admin/hosts')).hosts);
  } catch (e) {
    if (e.status === 401) signOut();
    else set('admin-result', 'hosts: ' + e.message);
  }
}

function renderHosts(hosts) {
  const now = Date.now();
  const seen = new Map();
  const select = $('admin-host');
  const chosen = select.value;
  const rows = hosts.map((h) => {
    const before = lastHosts.get(h.hostname);
    const perSecond = before ? Math.max(h.events - before.events, 0) / Math.max((now - before.at) / 1000, 0.001) : 0;
    seen.set(h.hostname, { events: h.events, at: now });
    const l = h.limits || {};
    const u = h.usage || {};
    const banned = h.status === 'banned';
    const button = el('button', banned ? 'Unban' : 'Ban', banned ? 'unban' : 'ban');
    button.type = 'button';
    button.dataset.action = banned ? 'unban' : 'ban';
    button.dataset.host = h.hostname;
    button.addEventListener('click', () => act('/admin/hosts/' + button.dataset.action, { url: h.hostname }));
    const tr = row([h.hostname, el('span', h.status, 'status ' + h.status), int(h.seq),
      int(h.accountCount) + ' / ' + int(l.accounts || 0), perSec(perSecond),
      `${int(u.perSecond || 0)}/${int(l.perSecond || 0)} · ${int(u.perHour || 0)}/${int(l.perHour || 0)} · ${int(u.perDay || 0)}/${int(l.perDay || 0)}`,
      h.lagSeconds === null || h.lagSeconds === undefined ? '–' : secs(h.lagSeconds),
      h.lastError || '', button]);
    tr.dataset.host = h.hostname;
    return tr;
  });
  lastHosts = seen;
  if (!rows.length) rows.push(row(['no hosts yet: add one below', '', '', '', '', '', '', '', '']));
  fill('hosts', rows);
  select.replaceChildren(...hosts.map((h) => {
    const o = el('option', h.hostname);
    o.value = h.hostname;
    return o;
  }));
  if (hosts.some((h) => h.hostname === chosen)) select.value = chosen;
  const current = hosts.find((h) => h.hostname === select.value);
  if (current && document.activeElement && !document.activeElement.closest('#host-form')) {
    $('limit-second').placeholder = current.limits.perSecond;
    $('limit-hour').placeholder = current.limits.perHour;
    $('limit-day').placeholder = current.limits.perDay;
    $('limit-accounts').placeholder = current.limits.accounts;
  }
}

async function act(path, body) {
  try {
    const answer = await admin(path, body);
    set('admin-result', `${path.split('/').pop()} ${body.url}: ${JSON.stringify(answer)}`);
  } catch (e) {
    set('admin-result', `${path.split('/').pop()} ${body.url} failed: ${e.message}`);
  }
  refreshHosts();
}

function number(id) {
  const v = $(id).value.trim();
  return v === '' ? undefined : Number(v);
}

function watchEvents() {
  if (eventsSocket || !snaps.length || !snaps[snaps.length - 1].relay) return;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}/subscribe`);
  eventsSocket = ws;
  const kept = [];
  ws.addEventListener('message', (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    const when = new Date(Math.floor(e.time_us / 1000)).toISOString().slice(11, 23);
    let what = '';
    if (e.kind === 'commit' && e.commit) what = `${e.commit.operation} ${e.commit.collection}/${e.commit.rkey}`;
    else if (e.kind === 'identity' && e.identity) what = e.identity.handle || '';
    else if (e.kind === 'account' && e.account) what = e.account.active ? 'active' : (e.account.status || 'inactive');
    kept.unshift(row([when, e.kind, e.did, what]));
    if (kept.length > EVENTS_KEPT) kept.pop();
    fill('events', kept);
  });
  ws.addEventListener('close', () => {
    if (eventsSocket === ws) {
      eventsSocket = null;
      if (token) setTimeout(watchEvents, 2000);
    }
  });
}

document.addEventListener('DOMContentLoaded', () => {
  connect();
  $('signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const given = $('signin-token').value.trim();
    if (given) signIn(given);
  });
  $('signout').addEventListener('click', signOut);
  $('reset-cursor').addEventListener('click', () =>
    act('/admin/hosts/reset-cursor', { url: $('admin-host').value, cursor: number('admin-cursor') || 0 }));
  $('set-limits').addEventListener('click', () =>
    act('/admin/hosts/limits', {
      url: $('admin-host').value,
      perSecond: number('limit-second'),
      perHour: number('limit-hour'),
      perDay: number('limit-day'),
      accounts: number('limit-accounts'),
    }));
  $('add-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const url = $('add-host-url').value.trim();
    if (url) act('/admin/hosts', { url });
  });
  if (token) signIn(token);
  // The event stream needs to know a relay is here: try again once the first snapshot came.
  setInterval(() => { if (token && !eventsSocket) watchEvents(); }, 3000);
});
