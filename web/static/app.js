// Emostream viewer page: tap emojis (POSTed to the gateway in small batches), watch each closed
// epoch's swarm, the last minute of counts per emoji, the trending emojis, the sentiment line,
// the popular streams, and the connection's state.
//
// Query parameters: ?stream=<id> picks the stream; ?subscriber=ws://host:port watches another
// subscriber than the one that served the page first; ?gateway=http://host:port and
// ?main=http://host:port override /config.json's gateway and main publisher; ?token=… is passed on
// to the subscriber when viewer tokens are required, until a registration brings a new one.
//
// Client guidance (README, "Writing a viewer client"): when the subscriber sends the page away
// (1001 stopping, 1008 token expired, 1012 upstream lost, or a refusal before the upgrade — a 503
// when full or without upstream, a 401 — which a browser sees only as a close before the socket
// opened), the page registers again at the main publisher's POST /register for a subscriber and
// a fresh token, then resumes with ?since; after 1013 (too slow) or a `lagged` notice it resumes
// from the same subscriber. Every retry backs off exponentially with full jitter, from 2–5 s after
// 1001 and 1012, which a subscriber sends to all its viewers at once.
'use strict';

// Single- and multi-codepoint emojis alike: a skin tone, VS16, a flag and a ZWJ family.
const TAPS = ['🔥', '❤️', '😂', '👏', '😮', '🎉', '👍🏽', '🇮🇳', '👨‍👩‍👧', '🏏', '⚽', '😢'];
const STREAM_RE = /^[a-z0-9_-]{1,64}$/;
const CHART_MS = 60_000;
// Taps within this long go out in one POST: fewer requests, still feels instant.
const FLUSH_MS = 120;
// Taps kept for a retry while the gateway refuses or is unreachable; beyond, the oldest go.
const MAX_PENDING = 500;
// Floating emojis alive at once, and released per epoch: a busy stream's 1000s of scaled
// emojis would only stutter the page, so a frame's swarm is scaled down proportionally.
const MAX_FLOATING = 350;
const MAX_PER_EPOCH = 240;
const EPOCH_ROWS = 12;
const RESUMED_SHOW_MS = 5000;
// A gap is news the viewer should not miss in a blink: lost epochs do not come back.
const GAP_SHOW_MS = 15_000;
const TRENDING_ROWS = 5;
// Chips of the latest epoch over the stage; the rest are one "+N more" chip.
const NOW_CHIPS = 10;
const POPULAR_ROWS = 6;
// A window sentiment index within this of 0 reads "neutral": single taps of mildly positive
// emojis (🔥, 😮) should not flip the word back and forth.
const NEUTRAL_BAND = 0.1;
const PALETTE = ['#ff6a88', '#7b5cff', '#3ddc97', '#ffc857', '#4cc9f0', '#f72585', '#b8f35d', '#ff9f1c'];

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat();
const params = new URLSearchParams(location.search);

const state = {
  gateway: '',
  // The main publisher (http://host:port), where the page registers again; '' when unknown, and
  // then it only ever reconnects to the subscriber it watches.
  main: '',
  subscriber: '',
  token: params.get('token'),
  userId: userId(),
  stream: 'main',
  // Bumped on every stream switch, so callbacks of an older socket or request do nothing.
  generation: 0,
  ws: null,
  attempt: 0,
  retryTimer: 0,
  // Tap POSTs refused or unanswered in a row: their retries back off.
  tapRefusals: 0,
  resumedTimer: 0,
  // The newest epoch received: the `since` of the next connection.
  lastEpoch: null,
  frames: new Map(), // epoch → frame, for the chart and the list
  mine: new Map(), // epoch → Map(emoji → taps the gateway acknowledged for it)
  lastMineEpoch: null,
  pending: [],
  flushTimer: 0,
  sent: 0,
  swarmQueue: [], // { at, emoji } sorted by `at`
  swarmFrame: null, // the newest frame not yet released as a swarm
  floating: 0,
  // The newest trend frame of each kind: the subscriber sends the latest at join and every
  // change after; a repeated or older one (after a reconnect) is ignored.
  trending: null,
  popular: null,
  sentiment: new Map(), // epoch → sentiment frame, for the last minute's sparkline
};

function userId() {
  const fresh = 'web-' + Array.from(crypto.getRandomValues(new Uint8Array(5)), (b) => b.toString(16).padStart(2, '0')).join('');
  try {
    let id = localStorage.getItem('emostream.user');
    if (!id) {
      id = fresh;
      localStorage.setItem('emostream.user', id);
    }
    return id;
  } catch {
    // Storage can be off (private windows, strict settings); a per-load id works the same.
    return fresh;
  }
}

// ---------------------------------------------------------------------------------------------
// Connection: one WebSocket to a subscriber; on a drop, back off and resume with ?since, from
// the same subscriber or, when it sent the page away, from the one a new registration names.

function setConn(kind, text) {
  const el = $('conn');
  el.dataset.state = kind;
  $('conn-text').textContent = text;
}

function connect() {
  const generation = state.generation;
  const url = new URL(`${state.subscriber}/v1/streams/${encodeURIComponent(state.stream)}/ws`);
  const resuming = state.lastEpoch !== null;
  if (resuming) url.searchParams.set('since', String(state.lastEpoch));
  if (state.token) url.searchParams.set('token', state.token);
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (e) {
    setConn('reconnecting', `Bad subscriber URL: ${e.message}`);
    return;
  }
  state.ws = ws;
  let opened = false;
  ws.onopen = () => {
    if (generation !== state.generation) return;
    opened = true;
    state.attempt = 0;
    clearTimeout(state.resumedTimer);
    if (resuming) {
      setConn('resumed', `Resumed after #${state.lastEpoch}`);
      state.resumedTimer = setTimeout(() => {
        if (generation === state.generation && state.ws === ws) setConn('live', 'Live');
      }, RESUMED_SHOW_MS);
    } else {
      setConn('live', 'Live');
    }
  };
  ws.onmessage = (ev) => {
    if (generation !== state.generation) return;
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (msg.type === 'epoch') {
      onFrame(msg);
    } else if (msg.type === 'trending' || msg.type === 'sentiment' || msg.type === 'popular') {
      onTrend(msg);
    } else if (msg.type === 'lagged') {
      // The subscriber skipped frames this page was too slow for; the gap is still in its
      // ring, so reconnecting with ?since fetches it.
      ws.close(4000, 'lagged');
    } else if (msg.type === 'gap') {
      // Resumed from further back than the subscriber's ring: the epochs between are gone.
      // Nothing brings them back, and every subscriber keeps the same ring: show it, go on.
      const from = msg.oldest === null ? 'live' : `#${msg.oldest}`;
      setConn('resumed', `Missed epochs after #${msg.since}; resumed from ${from}`);
      clearTimeout(state.resumedTimer);
      state.resumedTimer = setTimeout(() => {
        if (generation === state.generation && state.ws === ws) setConn('live', 'Live');
      }, GAP_SHOW_MS);
    }
  };
  ws.onclose = (ev) => {
    if (generation !== state.generation || state.ws !== ws) return;
    state.ws = null;
    onClosed(ev.code, ev.reason, opened);
  };
}

// What each close code asks of the page (docs/contracts.md). `opened`: whether the socket had
// opened; a refusal before the upgrade (503 full or without upstream, 401) reaches a browser only
// as a 1006 before that.
function onClosed(code, reason, opened) {
  switch (code) {
    case 1008:
      // The viewer token expired while watching: only a new token helps.
      if (state.main) {
        registerAgain('Viewer token expired');
      } else {
        setConn('failed', 'Viewer token expired: open the page again with a new ?token=');
      }
      return;
    case 1012:
      // The subscriber lost the tier above: another may serve.
      registerAgain('Subscriber lost its upstream', MASS_CLOSE);
      return;
    case 1013:
      // The page read too slowly: pause, then fetch what it missed from the same subscriber.
      scheduleReconnect('Too slow for this stream');
      return;
    case 1001:
      registerAgain('Subscriber stopping', MASS_CLOSE);
      return;
    case 1002:
    case 1007:
    case 1009:
      scheduleReconnect(`Refused by the subscriber (${code}${reason ? `: ${reason}` : ''})`);
      return;
    default:
      // Refused before the upgrade, or unreachable: registration finds a subscriber with room
      // and a token for this stream. A drop after opening is tried on the same one first.
      if (opened) {
        scheduleReconnect();
      } else {
        registerAgain('Subscriber refused or unreachable');
      }
  }
}

// A close every viewer of a subscriber gets together (1001 stopping, 1012 upstream lost).
const MASS_CLOSE = true;

function scheduleReconnect(why, massClose = false) {
  retryLater(why, 'Reconnecting', connect, massClose);
}

// Registers again at the main publisher when the page knows it; else the subscriber it watches
// is all it has.
function registerAgain(why, massClose = false) {
  if (state.main) {
    retryLater(why, 'Registering again', register, massClose);
  } else {
    scheduleReconnect(why, massClose);
  }
}

function retryLater(why, what, then, massClose = false) {
  const generation = state.generation;
  // Exponential backoff with full jitter (a uniform delay up to the backoff), so a restarted
  // subscriber, or the main publisher when a subscriber sends all its viewers away at once, is
  // not hit by every viewer at once. After such a mass close the first backoff is 2–5 s, not
  // 0.5 s: tens of thousands of pages spread over half a second would still be a storm.
  const first = massClose ? 2000 + Math.random() * 3000 : 500;
  const base = Math.min(8000, first * 2 ** state.attempt);
  const delay = Math.round(Math.random() * base);
  state.attempt += 1;
  const lead = why ? `${why}. ` : '';
  setConn('reconnecting', `${lead}${what} in ${Math.ceil(delay / 1000)} s…`);
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(() => {
    if (generation === state.generation) then();
  }, delay);
}

// POST /register at the main publisher: the subscriber with the most room for this stream and,
// when viewer tokens are on, a token good for this stream only. Then watch there, resuming with
// ?since (connect() passes the newest epoch the page has).
async function register() {
  const generation = state.generation;
  setConn('connecting', 'Registering…');
  let admission;
  try {
    const response = await fetch(`${state.main}/register`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user_id: state.userId, stream: state.stream }),
    });
    if (!response.ok) {
      // 503: no live subscriber, or every one is full.
      let error = `HTTP ${response.status}`;
      try {
        error = (await response.json()).error || error;
      } catch {
        // Not the JSON error body: the status says enough.
      }
      if (generation === state.generation) registerAgain(`No subscriber for now (${error})`);
      return;
    }
    admission = await response.json();
  } catch {
    if (generation === state.generation) registerAgain(`Can't reach the main publisher at ${state.main}`);
    return;
  }
  if (generation !== state.generation) return;
  state.subscriber = wsBase(admission.subscriber);
  state.token = admission.token || null;
  connect();
}

window.addEventListener('online', () => {
  if (!state.ws) {
    clearTimeout(state.retryTimer);
    connect();
  }
});

function watch(stream) {
  flush();
  state.generation += 1;
  clearTimeout(state.retryTimer);
  clearTimeout(state.resumedTimer);
  if (state.ws) state.ws.close(1000, 'switching stream');
  Object.assign(state, {
    stream, ws: null, attempt: 0, lastEpoch: null, frames: new Map(), mine: new Map(),
    lastMineEpoch: null, swarmQueue: [], swarmFrame: null, trending: null, sentiment: new Map(),
  });
  $('stream').value = stream;
  const url = new URL(location.href);
  url.searchParams.set('stream', stream);
  history.replaceState(null, '', url);
  document.title = `Emostream · ${stream}`;
  setConn('connecting', 'Connecting…');
  renderAll();
  connect();
}

// ---------------------------------------------------------------------------------------------
// Frames.

function onFrame(frame) {
  if (frame.stream !== state.stream || state.frames.has(frame.epoch)) return;
  state.frames.set(frame.epoch, frame);
  if (state.lastEpoch === null || frame.epoch > state.lastEpoch) {
    state.lastEpoch = frame.epoch;
    state.swarmFrame = frame;
  }
  // Keep a little more than the chart shows, so its left edge is never blank.
  const keepAfter = newestFrame().end_ms - CHART_MS - 10_000;
  for (const [epoch, f] of state.frames) {
    if (f.end_ms < keepAfter) state.frames.delete(epoch);
  }
  renderAll();
}

function newestFrame() {
  return state.lastEpoch === null ? null : state.frames.get(state.lastEpoch);
}

function renderAll() {
  renderNow();
  renderEpochs();
  renderMine();
  drawChart();
  renderTrending();
  renderSentiment();
  renderPopular();
}

function renderNow() {
  const f = newestFrame();
  $('now-epoch').textContent = f ? clock(f.start_ms) : '–';
  $('now-epoch').title = f ? `epoch #${f.epoch}` : '';
  $('now-total').textContent = `${fmt.format(f ? f.total : 0)} ${f && f.total === 1 ? 'tap' : 'taps'}`;
  const list = $('now-emojis');
  list.replaceChildren();
  if (!f) {
    list.append(el('li', { className: 'empty' }, 'Waiting for the first epoch…'));
    return;
  }
  const shown = f.emojis.slice(0, NOW_CHIPS);
  for (const e of shown) {
    list.append(el('li', {}, el('span', { className: 'e' }, e.emoji), fmt.format(e.count)));
  }
  // Everything else in one chip: the listed emojis past the chips, and those the frame itself
  // sums in `other` (a frame lists only the stream's most tapped emojis).
  const hidden = f.emojis.length - shown.length + (f.other ? f.other.distinct : 0);
  if (hidden > 0) {
    const taps = f.total - shown.reduce((a, e) => a + e.count, 0);
    list.append(el('li', { className: 'more', title: `${fmt.format(hidden)} more emojis` }, `+${fmt.format(hidden)} more`, el('span', { className: 'n' }, fmt.format(taps))));
  }
}

function renderEpochs() {
  const list = $('epochs');
  list.replaceChildren();
  const epochs = [...state.frames.keys()].sort((a, b) => b - a).slice(0, EPOCH_ROWS);
  if (epochs.length === 0) {
    list.append(el('li', { className: 'empty' }, 'No epochs yet'));
    return;
  }
  for (const epoch of epochs) {
    const f = state.frames.get(epoch);
    const row = el('li', { className: state.mine.has(epoch) ? 'has-mine' : '' });
    row.dataset.epoch = String(epoch);
    row.dataset.total = String(f.total);
    const items = f.emojis.map((e) => {
      const item = el('span', { className: 'emoji-count', title: `scaled ×${e.scaled}` }, el('span', { className: 'e' }, e.emoji), ` ${fmt.format(e.count)}`);
      item.dataset.emoji = e.emoji;
      item.dataset.count = String(e.count);
      return item;
    });
    if (f.other) {
      const n = f.other.distinct;
      const item = el('span', { className: 'emoji-count other', title: `${fmt.format(n)} less tapped ${n === 1 ? 'emoji' : 'emojis'}, summed by the stream` }, `+${fmt.format(n)} other ${fmt.format(f.other.count)}`);
      item.dataset.distinct = String(n);
      item.dataset.count = String(f.other.count);
      items.push(item);
    }
    const total = el('span', { className: 'total' }, fmt.format(f.total));
    if (f.late > 0) total.append(el('span', { className: 'late', title: 'late taps folded in' }, `+${fmt.format(f.late)} late`));
    row.append(el('span', { className: 'id', title: `epoch #${epoch}` }, clock(f.start_ms)), el('span', { className: 'list' }, ...items), total);
    list.append(row);
  }
}

// ---------------------------------------------------------------------------------------------
// Trend frames: the newest of each kind wins. `popular` is about every stream (stream "*").

function onTrend(frame) {
  if (frame.type === 'popular') {
    if (state.popular && frame.epoch < state.popular.epoch) return;
    state.popular = frame;
    renderPopular();
    return;
  }
  if (frame.stream !== state.stream) return;
  if (frame.type === 'trending') {
    if (state.trending && frame.epoch < state.trending.epoch) return;
    state.trending = frame;
    renderTrending();
    return;
  }
  const newest = newestSentiment();
  if (newest && frame.epoch < newest.epoch) return;
  state.sentiment.set(frame.epoch, frame);
  const keepAfter = frame.end_ms - CHART_MS - 10_000;
  for (const [epoch, f] of state.sentiment) {
    if (f.end_ms < keepAfter) state.sentiment.delete(epoch);
  }
  renderSentiment();
}

function newestSentiment() {
  let newest = null;
  for (const f of state.sentiment.values()) if (!newest || f.epoch > newest.epoch) newest = f;
  return newest;
}

function renderTrending() {
  const f = state.trending;
  if (f) $('trend-window').textContent = `last ${Math.round((f.end_ms - f.start_ms) / 1000)} s`;
  const list = $('trending');
  list.replaceChildren();
  const top = f ? f.emojis.slice(0, TRENDING_ROWS) : [];
  if (top.length === 0) {
    list.append(el('li', { className: 'empty' }, f ? 'No taps in the window' : 'Waiting for trends…'));
    return;
  }
  const max = top[0].count;
  for (const e of top) {
    const bar = el('span', { className: 'bar-fill' });
    bar.style.width = `${Math.max(4, (e.count / max) * 100)}%`;
    const row = el('li', {}, el('span', { className: 'e' }, e.emoji), el('span', { className: 'bar-track' }, bar), el('span', { className: 'n' }, fmt.format(e.count)));
    row.dataset.emoji = e.emoji;
    row.dataset.count = String(e.count);
    list.append(row);
  }
}

function mood(index) {
  if (index === null || index === undefined) return 'none';
  if (index > NEUTRAL_BAND) return 'positive';
  if (index < -NEUTRAL_BAND) return 'negative';
  return 'neutral';
}

function renderSentiment() {
  const newest = newestSentiment();
  const index = newest ? newest.window.index : null;
  const m = mood(index);
  $('sentiment').dataset.mood = m;
  $('sentiment-value').textContent = index === null ? '–' : `${index > 0 ? '+' : ''}${index.toFixed(2)}`;
  $('sentiment-value').title = newest ? `${newest.window.scored} of ${newest.window.taps} taps scored` : '';
  $('sentiment-word').textContent = m === 'none' ? 'no data' : m;
  drawSpark();
}

// The window index over the last minute on a fixed −1…+1 scale, so the line's height means the
// same from minute to minute. A frame is sent only when the index changed, so each value holds
// until the next one: a step line.
function drawSpark() {
  const canvas = $('spark');
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const right = Date.now();
  const left = right - CHART_MS;
  const x = (t) => ((Math.min(right, Math.max(left, t)) - left) / CHART_MS) * width;
  const y = (v) => 2 + (1 - (v + 1) / 2) * (height - 4);
  ctx.strokeStyle = 'rgba(255, 255, 255, 0.15)';
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, Math.round(y(0)) + 0.5);
  ctx.lineTo(width, Math.round(y(0)) + 0.5);
  ctx.stroke();
  const points = [...state.sentiment.values()].sort((a, b) => a.epoch - b.epoch);
  const color = getComputedStyle($('sentiment')).getPropertyValue('--mood').trim() || '#a9a4c9';
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.lineJoin = 'round';
  ctx.beginPath();
  let last = null;
  points.forEach((f, i) => {
    const until = i + 1 < points.length ? points[i + 1].end_ms : right;
    if (until < left) return;
    if (f.window.index === null) {
      last = null;
      return;
    }
    const py = y(f.window.index);
    if (last === null) ctx.moveTo(x(f.end_ms), py);
    else ctx.lineTo(x(f.end_ms), py);
    ctx.lineTo(x(until), py);
    last = { px: x(until), py };
  });
  ctx.stroke();
  if (last) {
    ctx.fillStyle = color;
    ctx.beginPath();
    ctx.arc(Math.min(last.px, width - 3), last.py, 2.5, 0, Math.PI * 2);
    ctx.fill();
  }
}

function renderPopular() {
  const list = $('popular');
  list.replaceChildren();
  const streams = state.popular ? state.popular.streams.slice(0, POPULAR_ROWS) : [];
  if (streams.length === 0) {
    list.append(el('li', { className: 'empty' }, state.popular ? 'No taps anywhere right now' : 'Waiting for trends…'));
    return;
  }
  streams.forEach((s, i) => {
    const name = el('button', { type: 'button', className: 'name', title: `Watch ${s.stream}` }, s.stream);
    name.addEventListener('click', () => {
      if (s.stream !== state.stream) watch(s.stream);
    });
    const row = el('li', { className: s.stream === state.stream ? 'current' : '' },
      el('span', { className: 'rank' }, String(i + 1)), name,
      el('span', { className: 'n', title: `${fmt.format(s.taps)} taps in the window` }, s.taps_per_epoch.toFixed(1)));
    row.dataset.stream = s.stream;
    list.append(row);
  });
}

// ---------------------------------------------------------------------------------------------
// Tapping: taps are batched for FLUSH_MS and POSTed as one JSON array.

function tap(emoji, button) {
  state.pending.push({ user_id: state.userId, emoji, timestamp: Date.now() });
  if (state.pending.length > MAX_PENDING) state.pending.splice(0, state.pending.length - MAX_PENDING);
  state.sent += 1;
  $('sent').textContent = fmt.format(state.sent);
  ownFloat(emoji, button);
  button.classList.add('hit');
  setTimeout(() => button.classList.remove('hit'), 90);
  if (!state.flushTimer) state.flushTimer = setTimeout(flush, FLUSH_MS);
}

async function flush() {
  clearTimeout(state.flushTimer);
  state.flushTimer = 0;
  if (state.pending.length === 0) return;
  const batch = state.pending.splice(0);
  const { stream, generation } = state;
  const retry = (ms) => {
    // Only a batch of the stream still watched is worth retrying (null: dropped).
    if (generation !== state.generation) return null;
    state.pending.unshift(...batch);
    // Never sooner than asked, doubling while refusals go on (to 30 s), and spread over up to
    // twice that: pages refused together by an outage must not all come back together.
    const backoff = Math.max(ms, Math.min(30_000, 1000 * 2 ** state.tapRefusals));
    const delay = Math.round(backoff * (1 + Math.random()));
    state.tapRefusals += 1;
    clearTimeout(state.flushTimer);
    state.flushTimer = setTimeout(flush, delay);
    return Math.ceil(delay / 1000);
  };
  let response;
  try {
    response = await fetch(`${state.gateway}/v1/streams/${encodeURIComponent(stream)}/emojis`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(batch),
    });
  } catch {
    const seconds = retry(2000);
    if (seconds === null) return;
    showTapError(`Can't reach the gateway at ${state.gateway}; retrying in ${seconds} s…`);
    return;
  }
  if (response.status === 202) {
    state.tapRefusals = 0;
    hideTapError();
    const ack = await response.json();
    if (generation !== state.generation) return;
    const counts = state.mine.get(ack.epoch) || new Map();
    for (const t of batch) counts.set(t.emoji, (counts.get(t.emoji) || 0) + 1);
    state.mine.set(ack.epoch, counts);
    if (state.lastMineEpoch === null || ack.epoch >= state.lastMineEpoch) state.lastMineEpoch = ack.epoch;
    renderMine();
    renderEpochs();
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 429 || response.status === 503) {
    const asked = Number(response.headers.get('retry-after')) || 1;
    const seconds = retry(asked * 1000);
    if (seconds === null) return;
    showTapError(response.status === 429
      ? `Slow down! Retrying in ${seconds} s`
      : `The gateway is busy; retrying in ${seconds} s`);
  } else {
    showTapError(`Refused (${response.status}): ${body.error || 'unknown error'}`);
  }
}

function showTapError(text) {
  const box = $('tap-error');
  box.textContent = text;
  box.hidden = false;
}

function hideTapError() {
  $('tap-error').hidden = true;
}

// The acknowledged taps of an epoch are "counted" once that epoch's frame holds at least them:
// each listed emoji at least our taps of it, and the frame's `other` (the emojis it does not
// list, summed) at least our taps of the emojis it does not list.
function isCounted(epoch) {
  const frame = state.frames.get(epoch);
  const mine = state.mine.get(epoch);
  if (!frame || !mine) return false;
  let unlisted = 0;
  for (const [emoji, n] of mine) {
    const got = frame.emojis.find((e) => e.emoji === emoji);
    if (!got) unlisted += n;
    else if (got.count < n) return false;
  }
  return unlisted === 0 || (frame.other ? frame.other.count : 0) >= unlisted;
}

function renderMine() {
  let counted = 0;
  for (const [epoch, taps] of state.mine) {
    if (isCounted(epoch)) for (const n of taps.values()) counted += n;
  }
  $('counted').textContent = fmt.format(counted);
  const box = $('mine');
  const epoch = state.lastMineEpoch;
  if (epoch === null) {
    box.hidden = true;
    return;
  }
  const taps = state.mine.get(epoch);
  const n = [...taps.values()].reduce((a, b) => a + b, 0);
  const plural = n === 1 ? 'tap' : 'taps';
  box.hidden = false;
  box.dataset.epoch = String(epoch);
  if (isCounted(epoch)) {
    const frame = state.frames.get(epoch);
    const parts = [...taps.keys()].map((emoji) => {
      const got = frame.emojis.find((e) => e.emoji === emoji);
      return [el('span', { className: 'e' }, emoji), got ? ` ${fmt.format(got.count)}` : ' in other'];
    });
    box.dataset.state = 'counted';
    box.className = 'mine counted';
    box.replaceChildren(`✓ Your ${n} ${plural} counted in the ${clock(frame.start_ms)} epoch: `, ...parts.flatMap((p, i) => (i ? [' · ', ...p] : p)));
  } else {
    box.dataset.state = 'waiting';
    box.className = 'mine';
    box.textContent = `Your ${n} ${plural} went into epoch #${epoch}; waiting for it to close…`;
    box.title = `epoch #${epoch}`;
  }
}

// ---------------------------------------------------------------------------------------------
// The swarm: each emoji's `scaled` count, released as floating emojis spread over the epoch.

// Emojis a frame sums in `other` have no glyph to fly: the swarm is the listed ones.
function releaseSwarm(frame, now) {
  const window = Math.max(500, frame.end_ms - frame.start_ms);
  const wanted = frame.emojis.reduce((a, e) => a + e.scaled, 0);
  const factor = Math.min(1, MAX_PER_EPOCH / Math.max(1, wanted));
  const items = [];
  for (const e of frame.emojis) {
    // Every emoji present gets at least one, however much the swarm is scaled down.
    const copies = Math.max(1, Math.round(e.scaled * factor));
    for (let i = 0; i < copies; i++) items.push({ at: now + Math.random() * window, emoji: e.emoji });
  }
  // A new epoch replaces what is left of the previous one's swarm, so the swarm never lags.
  state.swarmQueue = items.sort((a, b) => a.at - b.at);
}

function tick(now) {
  if (state.swarmFrame) {
    // Only the newest frame since the last tick: a resume's replay of older epochs is listed
    // and charted, not flown.
    if (!document.hidden) releaseSwarm(state.swarmFrame, now);
    state.swarmFrame = null;
  }
  const q = state.swarmQueue;
  let i = 0;
  while (i < q.length && q[i].at <= now) {
    if (state.floating < MAX_FLOATING) spawnFloat(q[i].emoji, Math.random() * 92 + 2, false);
    i++;
  }
  if (i) q.splice(0, i);
  requestAnimationFrame(tick);
}

function spawnFloat(emoji, leftPercent, own) {
  const stage = $('stage');
  const height = stage.clientHeight || 300;
  const size = own ? 44 : 22 + Math.random() * 20;
  const span = el('span', { className: own ? 'float own' : 'float' }, emoji);
  span.style.left = `${leftPercent}%`;
  span.style.fontSize = `${size}px`;
  span.style.setProperty('--dur', `${(2.4 + Math.random() * 1.6).toFixed(2)}s`);
  span.style.setProperty('--dx', `${Math.round((Math.random() - 0.5) * 120)}px`);
  span.style.setProperty('--rise', `${Math.round(height * (0.75 + Math.random() * 0.35))}px`);
  span.style.setProperty('--spin', `${Math.round((Math.random() - 0.5) * 50)}deg`);
  state.floating += 1;
  span.addEventListener('animationend', () => {
    span.remove();
    state.floating -= 1;
  }, { once: true });
  stage.append(span);
}

function ownFloat(emoji, button) {
  const stage = $('stage').getBoundingClientRect();
  const b = button.getBoundingClientRect();
  const left = ((b.left + b.width / 2 - stage.left) / Math.max(1, stage.width)) * 100;
  spawnFloat(emoji, Math.min(92, Math.max(2, left - 3)), true);
}

// ---------------------------------------------------------------------------------------------
// The chart: taps per epoch for the busiest emojis of the last minute, on a plain canvas.

function drawChart() {
  const canvas = $('chart');
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const newest = newestFrame();
  const pad = { left: 40, right: 10, top: 8, bottom: 20 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  // The right edge follows the wall clock, so the chart scrolls even between frames.
  const right = Date.now();
  const left = right - CHART_MS;
  const x = (t) => pad.left + ((t - left) / CHART_MS) * plotW;

  const frames = [...state.frames.values()].filter((f) => f.end_ms >= left).sort((a, b) => a.epoch - b.epoch);
  const totals = new Map();
  for (const f of frames) for (const e of f.emojis) totals.set(e.emoji, (totals.get(e.emoji) || 0) + e.count);
  const top = [...totals.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, PALETTE.length).map(([e]) => e);
  let max = 0;
  for (const f of frames) for (const e of f.emojis) if (top.includes(e.emoji)) max = Math.max(max, e.count);
  const yMax = niceMax(max);
  const y = (v) => pad.top + plotH - (v / yMax) * plotH;

  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = 'rgba(169, 164, 201, 0.9)';
  ctx.strokeStyle = 'rgba(255, 255, 255, 0.08)';
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const v = (yMax / 4) * i;
    ctx.beginPath();
    ctx.moveTo(pad.left, Math.round(y(v)) + 0.5);
    ctx.lineTo(width - pad.right, Math.round(y(v)) + 0.5);
    ctx.stroke();
    ctx.fillText(compact(v), pad.left - 6, y(v));
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  for (const s of [60, 45, 30, 15, 0]) ctx.fillText(s ? `-${s}s` : 'now', x(right - s * 1000), height - pad.bottom + 5);

  const legend = $('legend');
  legend.replaceChildren();
  if (!newest || frames.length === 0) {
    ctx.textBaseline = 'middle';
    ctx.fillText('Counts appear here as epochs close', pad.left + plotW / 2, pad.top + plotH / 2);
    return;
  }
  // Epochs without a frame had no taps: draw them as zero, but only up to the newest closed one.
  const windowMs = newest.end_ms - newest.start_ms;
  const byEpoch = new Map(frames.map((f) => [f.epoch, f]));
  const first = Math.max(frames[0].epoch, Math.floor(left / windowMs));
  ctx.save();
  ctx.beginPath();
  ctx.rect(pad.left, 0, plotW, height);
  ctx.clip();
  top.forEach((emoji, i) => {
    const color = PALETTE[i];
    ctx.strokeStyle = color;
    ctx.lineWidth = i === 0 ? 2.5 : 1.75;
    ctx.lineJoin = 'round';
    ctx.beginPath();
    let last = null;
    for (let epoch = first; epoch <= newest.epoch; epoch++) {
      const f = byEpoch.get(epoch);
      const count = f ? (f.emojis.find((e) => e.emoji === emoji) || { count: 0 }).count : 0;
      const px = x((epoch + 1) * windowMs);
      if (last === null) ctx.moveTo(px, y(count));
      else ctx.lineTo(px, y(count));
      last = { px, py: y(count), count };
    }
    ctx.stroke();
    if (last) {
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(last.px, last.py, 3, 0, Math.PI * 2);
      ctx.fill();
    }
    const item = el('li', {}, el('span', { className: 'swatch' }), el('span', { className: 'e' }, emoji), fmt.format(totals.get(emoji)));
    item.firstChild.style.background = color;
    legend.append(item);
  });
  ctx.restore();
}

function niceMax(v) {
  if (v <= 4) return 4;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function compact(v) {
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return String(Math.round(v));
}

// ---------------------------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// An epoch's start as the viewer's wall-clock time: easier to follow than its number.
function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
}

function wsBase(url) {
  return url.replace(/^http(s?):/, 'ws$1:').replace(/\/+$/, '');
}

async function start() {
  let config = {};
  try {
    config = await (await fetch('config.json', { cache: 'no-cache' })).json();
  } catch {
    // Served without /config.json (a plain file server): the gateway is then this origin.
  }
  state.gateway = (params.get('gateway') || config.gateway || location.origin).replace(/\/+$/, '');
  state.main = (params.get('main') || config.main || '').replace(/\/+$/, '');
  state.subscriber = wsBase(params.get('subscriber') || location.origin);
  $('user').textContent = state.userId;

  const buttons = $('tap-buttons');
  for (const emoji of TAPS) {
    const b = el('button', { type: 'button', title: `Tap ${emoji}` }, emoji);
    b.setAttribute('aria-label', `Tap ${emoji}`);
    b.dataset.emoji = emoji;
    b.addEventListener('click', () => tap(emoji, b));
    buttons.append(b);
  }
  $('stream-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const stream = $('stream').value.trim();
    if (STREAM_RE.test(stream) && stream !== state.stream) watch(stream);
  });
  new ResizeObserver(drawChart).observe($('chart'));
  new ResizeObserver(drawSpark).observe($('spark'));
  // Redrawn twice a second so the minute scrolls between epochs.
  setInterval(() => {
    drawChart();
    drawSpark();
  }, 500);
  window.addEventListener('pagehide', flush);
  requestAnimationFrame(tick);

  const wanted = params.get('stream');
  watch(wanted && STREAM_RE.test(wanted) ? wanted : 'main');
}

start();
