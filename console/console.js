// @ts-check
/**
 * The ops console: sign in with the admin token, then events (list, create, edit, trigger a
 * stage), the live reach of their broadcasts, and the fleet (nodes, shedding, drain). Live data
 * comes from `GET /v1/admin/stream`; when the server has no stream the console polls.
 * Everything is drawn with DOM calls and textContent: nothing from the API becomes markup.
 * @module
 */
import {
  AdminApi, ApiError, FETCH_WITHIN_MAX_MS, PAYLOAD_MAX_BYTES, checkPayload, defaultFetchWindowMs,
  subscribersOf,
} from './api.js';

/**
 * @typedef {import('./api.js').EventSummary} EventSummary
 * @typedef {import('./api.js').Stats} Stats
 * @typedef {import('./api.js').ProtectionStatus} ProtectionStatus
 * @typedef {import('./api.js').BroadcastSummary} BroadcastSummary
 * @typedef {import('./api.js').BroadcastReport} BroadcastReport
 */

const TOKEN_KEY = 'ringside.admin-token';
/** How often the console polls what the stream does not carry (protection), or everything without a stream. */
const POLL_INTERVAL_MS = 2000;
/** Wait before reopening a stream that ended, doubling up to the maximum. */
const STREAM_RETRY_MIN_MS = 1000;
const STREAM_RETRY_MAX_MS = 15_000;
/** Why an event has no subscriber count (see `subscribersOf`). */
const NOT_COUNTED = 'nodes count an event\'s devices from its first published state';

/** Everything the page shows, as last read. */
const state = {
  /** @type {AdminApi | null} */
  api: null,
  /** @type {EventSummary[]} */
  events: [],
  /** @type {Stats | null} */
  stats: null,
  /** @type {ProtectionStatus | null} */
  protection: null,
  /** @type {string | null} the event whose broadcasts are shown */
  reportEvent: null,
  /** @type {number | null} the version shown; null follows the newest */
  reportVersion: null,
  /** @type {BroadcastSummary[]} */
  broadcasts: [],
  /** @type {BroadcastReport | null} */
  report: null,
  /** Whether the stream carries stats, events and broadcasts now. */
  streaming: false,
  /** @type {AbortController | null} */
  session: null,
};

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @returns {T}
 */
function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page lacks #${id}`);
  return /** @type {T} */ (element);
}

/**
 * A new element with attributes and children (strings become text).
 * @param {string} tag
 * @param {Record<string, string | boolean | undefined>} [attributes]
 * @param {...(Node | string | null | undefined)} children
 * @returns {HTMLElement}
 */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === false) continue;
    element.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) element.append(child);
  }
  return element;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
/**
 * @param {string} tag
 * @param {Record<string, string | number>} attributes
 * @param {string} [text]
 */
function svg(tag, attributes, text) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

/**
 * Replaces a table body's rows and keeps the keyboard focus on the same button: live updates
 * redraw rows every second or so, and must not throw an operator's focus back to the page.
 * @param {HTMLElement} body
 * @param {HTMLElement[]} rows
 */
function replaceRows(body, rows) {
  const focused = document.activeElement;
  const key = focused instanceof HTMLElement && body.contains(focused) ? focused.dataset.focusKey : undefined;
  body.replaceChildren(...rows);
  if (key === undefined) return;
  for (const button of body.querySelectorAll('button')) {
    if (button.dataset.focusKey === key) { button.focus(); return; }
  }
}

/** @param {unknown} error */
function messageOf(error) {
  if (error instanceof ApiError) return error.message;
  if (error instanceof Error) return error.message;
  return String(error);
}

/**
 * The status line (aria-live): what just happened.
 * @param {string} text
 * @param {boolean} [bad]
 */
function say(text, bad = false) {
  const status = byId('status');
  status.textContent = text;
  status.classList.toggle('bad', bad);
}

/** @param {number} fraction */
const percent = (fraction) => `${(fraction * 100).toFixed(fraction >= 0.999 || fraction === 0 ? 0 : 1)} %`;
/** @param {number} ms */
const clock = (ms) => new Date(ms).toLocaleTimeString();
/** @param {number} ms */
function duration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
}

/**
 * RFC 3339 (UTC, whole seconds) of a `datetime-local` value, read as local time.
 * @param {string} local
 */
function rfc3339OfLocal(local) {
  const date = new Date(local);
  if (Number.isNaN(date.getTime())) return null;
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/**
 * The `datetime-local` value of an RFC 3339 timestamp, in local time.
 * @param {string} rfc3339
 */
function localOf(rfc3339) {
  const date = new Date(rfc3339);
  if (Number.isNaN(date.getTime())) return '';
  const offset = date.getTimezoneOffset() * 60_000;
  return new Date(date.getTime() - offset).toISOString().slice(0, 19);
}

/** @param {string} text */
const stagesOf = (text) => text.split(/[\s,]+/).map((s) => s.trim()).filter((s) => s !== '');

// ---------------------------------------------------------------------------------------------
// Sign in

async function signIn(/** @type {string} */ token, /** @type {boolean} */ remembered) {
  const api = new AdminApi(token);
  const errorLine = byId('sign-in-error');
  errorLine.textContent = '';
  try {
    // Any admin read proves the token; the list is needed anyway.
    const list = await api.events();
    state.events = list.events;
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    errorLine.textContent = error instanceof ApiError && error.status === 401
      ? `Sign-in refused: ${error.message}`
      : `Cannot sign in: ${messageOf(error)}`;
    if (!remembered) byId('token').focus();
    say('Signed out.');
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.api = api;
  /** @type {HTMLInputElement} */ (byId('token')).value = '';
  byId('sign-in').hidden = true;
  byId('app').hidden = false;
  byId('sign-out').hidden = false;
  say('Signed in.');
  renderEvents();
  startSession();
}

/** @param {string} [why] */
function signOut(why) {
  state.session?.abort();
  state.session = null;
  state.api = null;
  state.stats = null;
  state.events = [];
  state.protection = null;
  state.reportEvent = null;
  state.report = null;
  state.broadcasts = [];
  sessionStorage.removeItem(TOKEN_KEY);
  for (const dialog of document.querySelectorAll('dialog')) {
    if (dialog.open) dialog.close();
  }
  byId('app').hidden = true;
  byId('sign-out').hidden = true;
  byId('sign-in').hidden = false;
  byId('sign-in-error').textContent = why ?? '';
  say('Signed out.', Boolean(why));
  byId('token').focus();
}

/**
 * A failed call during the session: a 401 ends it (the token was changed), anything else is
 * shown where it happened.
 * @param {unknown} error
 * @param {HTMLElement} [where]
 */
function report(error, where) {
  if (error instanceof ApiError && error.status === 401) {
    signOut(`Signed out: ${error.message}`);
    return;
  }
  if (where) where.textContent = messageOf(error);
  else say(messageOf(error), true);
}

// ---------------------------------------------------------------------------------------------
// Live data: the stream, else polling

function startSession() {
  const session = new AbortController();
  state.session = session;
  void refreshAll();
  void runStream(session.signal);
  const timer = setInterval(() => {
    if (session.signal.aborted) { clearInterval(timer); return; }
    void refreshProtection();
    if (!state.streaming) void refreshAll();
  }, POLL_INTERVAL_MS);
}

/** @param {AbortSignal} signal */
async function runStream(signal) {
  let wait = STREAM_RETRY_MIN_MS;
  while (!signal.aborted && state.api) {
    const api = state.api;
    /** @type {unknown} */
    let lastError = null;
    try {
      await api.stream((name, data) => { state.streaming = true; wait = STREAM_RETRY_MIN_MS; onStreamEvent(name, data); }, signal);
    } catch (error) {
      if (signal.aborted) return;
      lastError = error;
      if (error instanceof ApiError && error.status === 401) { report(error); return; }
      if (error instanceof ApiError && error.status === 404) {
        // A server without the stream: poll (every POLL_INTERVAL_MS) for as long as we are signed in.
        state.streaming = false;
        say(`Live stream not available (${error.message}); refreshing every ${POLL_INTERVAL_MS / 1000} s.`);
        return;
      }
    }
    state.streaming = false;
    if (signal.aborted) return;
    // A full house of streams (503) says when to come back: never sooner than that.
    const asked = lastError instanceof ApiError && lastError.retryAfterMs !== null ? lastError.retryAfterMs : 0;
    await new Promise((resolve) => setTimeout(resolve, Math.max(wait, asked)));
    wait = Math.min(wait * 2, STREAM_RETRY_MAX_MS);
  }
}

/**
 * @param {string} name
 * @param {unknown} data
 */
function onStreamEvent(name, data) {
  if (name === 'stats') {
    state.stats = /** @type {Stats} */ (data);
    renderEvents();
    renderFleet();
    refreshOpenTrigger();
  } else if (name === 'events') {
    state.events = /** @type {{ events: EventSummary[] }} */ (data).events;
    renderEvents();
  } else if (name === 'broadcast') {
    const incoming = /** @type {BroadcastReport} */ (data);
    if (incoming.event !== state.reportEvent) return;
    mergeSummary(incoming);
    if (state.reportVersion === null || state.reportVersion === incoming.version) {
      state.report = incoming;
      byId('report-error').textContent = '';
      renderReport();
    }
    renderBroadcasts();
  }
}

/** @param {BroadcastSummary} summary */
function mergeSummary(summary) {
  const at = state.broadcasts.findIndex((b) => b.version === summary.version);
  if (at === -1) {
    state.broadcasts.unshift(summary);
    state.broadcasts.sort((a, b) => b.version - a.version);
  } else {
    state.broadcasts[at] = summary;
  }
}

async function refreshAll() {
  const api = state.api;
  if (!api) return;
  const [stats, events] = await Promise.allSettled([api.stats(), api.events()]);
  if (api !== state.api) return;
  if (stats.status === 'fulfilled') { state.stats = stats.value; } else { report(stats.reason, byId('fleet-error')); }
  if (events.status === 'fulfilled') { state.events = events.value.events; } else { report(events.reason); }
  renderEvents();
  renderFleet();
  refreshOpenTrigger();
  if (stats.status === 'fulfilled') byId('fleet-error').textContent = '';
  if (!state.streaming && state.reportEvent) await refreshBroadcasts();
}

async function refreshProtection() {
  const api = state.api;
  if (!api) return;
  try {
    state.protection = await api.protection();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) { report(error); return; }
    state.protection = null;
    byId('protection-summary').textContent = `Protection: ${messageOf(error)}`;
    return;
  }
  renderFleet();
}

/** Reads the shown event's broadcasts and the report shown (the newest unless one was chosen). */
async function refreshBroadcasts() {
  const api = state.api;
  const event = state.reportEvent;
  if (!api || !event) return;
  const errorLine = byId('report-error');
  try {
    const list = await api.broadcasts(event);
    if (event !== state.reportEvent) return;
    state.broadcasts = list.broadcasts;
    renderBroadcasts();
    const version = state.reportVersion ?? state.broadcasts[0]?.version ?? null;
    if (version === null) {
      errorLine.textContent = '';
      byId('report-detail').hidden = true;
      byId('report-hint').textContent = 'No broadcast of this event yet.';
      return;
    }
    if (version > (state.broadcasts[0]?.version ?? 0)) {
      // Newer than any node reports (just published): asking for it would be a 404 until the
      // node records it, shortly. The stream (or the next poll) brings it.
      errorLine.textContent = '';
      byId('report-hint').textContent = `Waiting for the nodes to report version ${version}…`;
      return;
    }
    const fetched = await api.broadcast(event, version);
    if (event !== state.reportEvent) return;
    state.report = fetched;
    errorLine.textContent = '';
    renderReport();
  } catch (error) {
    report(error, errorLine);
  }
}

/**
 * Shows the broadcasts of `event`, following the newest (or `version`).
 * @param {string} event
 * @param {number | null} version
 */
function showBroadcasts(event, version) {
  if (state.reportEvent !== event) {
    state.broadcasts = [];
    state.report = null;
  } else if (version !== null && state.report && state.report.version !== version) {
    // Another version of the same event (a trigger just published one): the one shown until
    // now is not it, and must not pass for it while the new one is read.
    state.report = null;
  }
  state.reportEvent = event;
  state.reportVersion = version;
  byId('report-body').hidden = false;
  byId('report-hint').textContent = '';
  const summary = state.events.find((e) => e.id === event);
  byId('report-event').textContent = summary ? `${summary.title} (${event})` : event;
  renderReport();
  void refreshBroadcasts();
}

// ---------------------------------------------------------------------------------------------
// Events

function renderEvents() {
  const body = byId('events-table').querySelector('tbody');
  if (!body) return;
  const rows = state.events.map((event) => {
    const subscribed = subscribersOf(state.stats, event.id);
    const row = h('tr', { 'data-event': event.id, class: event.id === state.reportEvent ? 'selected' : undefined },
      h('th', { scope: 'row' }, event.title),
      h('td', {}, h('code', {}, event.id)),
      h('td', {}, h('time', { datetime: event.starts_at, title: event.starts_at }, new Date(event.starts_at).toLocaleString())),
      h('td', {}, event.stages.join(' → ')),
      h('td', {}, event.stage ?? '—'),
      h('td', { class: 'num' }, String(event.version)),
      h('td', { class: 'num', title: subscribed === null ? NOT_COUNTED : undefined },
        subscribed === null ? (state.stats ? '—' : '…') : String(subscribed)),
      h('td', {},
        actionButton('Trigger…', `a stage of ${event.title}`, () => openTrigger(event.id), `event ${event.id}`),
        actionButton('Edit…', event.title, () => openEdit(event.id), `event ${event.id}`),
        actionButton('Broadcasts', `of ${event.title}`, () => showBroadcasts(event.id, null), `event ${event.id}`)));
    return row;
  });
  replaceRows(body, rows);
  byId('events-empty').hidden = state.events.length > 0;
}

/**
 * A row's button: its visible text, then (for screen readers) what it acts on, so that its
 * accessible name starts with what is seen. Its focus key (how a redraw finds it again) is the
 * text and `keyOf`, else the context: an event's buttons are keyed by its id, since an edit
 * (here or through the stream) may change the title they name.
 * @param {string} text
 * @param {string} context
 * @param {() => void} action
 * @param {string} [keyOf]
 */
function actionButton(text, context, action, keyOf = context) {
  const key = `${text} ${keyOf}`;
  const button = h('button', { type: 'button', 'data-focus-key': key }, text,
    h('span', { class: 'visually-hidden' }, ` ${context}`));
  button.addEventListener('click', () => { returnFocusKey = key; action(); });
  return button;
}

/** The button that opened the dialog open now: rows are redrawn meanwhile, so it is found again by key. */
let returnFocusKey = '';

/** Gives the focus back to the (redrawn) button that opened a dialog. */
function returnFocus() {
  for (const button of document.querySelectorAll('button[data-focus-key]')) {
    if (button instanceof HTMLElement && button.dataset.focusKey === returnFocusKey) { button.focus(); return; }
  }
}

async function createEvent(/** @type {SubmitEvent} */ submit) {
  submit.preventDefault();
  const api = state.api;
  if (!api) return;
  const form = /** @type {HTMLFormElement} */ (submit.target);
  const data = new FormData(form);
  const errorLine = byId('create-error');
  const startsAt = rfc3339OfLocal(String(data.get('starts_at') ?? ''));
  if (!startsAt) { errorLine.textContent = 'starts at: choose a date and time'; return; }
  const event = {
    id: String(data.get('id') ?? '').trim(),
    title: String(data.get('title') ?? '').trim(),
    starts_at: startsAt,
    stages: stagesOf(String(data.get('stages') ?? '')),
  };
  try {
    const created = await api.createEvent(event);
    errorLine.textContent = '';
    state.events = [...state.events.filter((e) => e.id !== created.id), created];
    renderEvents();
    form.reset();
    defaultStartsAt();
    say(`Event ${created.id} created.`);
  } catch (error) {
    report(error, errorLine);
  }
}

function defaultStartsAt() {
  const input = /** @type {HTMLInputElement} */ (byId('create-starts'));
  const inAnHour = new Date(Date.now() + 3_600_000);
  inAnHour.setMinutes(0, 0, 0);
  input.value = localOf(inAnHour.toISOString());
}

/** @type {string | null} */
let editing = null;

/** @param {string} id */
function openEdit(id) {
  const event = state.events.find((e) => e.id === id);
  if (!event) return;
  editing = id;
  /** @type {HTMLInputElement} */ (byId('edit-title-input')).value = event.title;
  /** @type {HTMLInputElement} */ (byId('edit-starts')).value = localOf(event.starts_at);
  /** @type {HTMLInputElement} */ (byId('edit-stages')).value = event.stages.join(', ');
  byId('edit-title').textContent = `Edit ${event.title}`;
  byId('edit-error').textContent = '';
  /** @type {HTMLDialogElement} */ (byId('edit-dialog')).showModal();
}

async function saveEdit(/** @type {SubmitEvent} */ submit) {
  submit.preventDefault();
  const api = state.api;
  const event = state.events.find((e) => e.id === editing);
  if (!api || !event) return;
  const errorLine = byId('edit-error');
  const startsAt = rfc3339OfLocal(/** @type {HTMLInputElement} */ (byId('edit-starts')).value);
  if (!startsAt) { errorLine.textContent = 'starts at: choose a date and time'; return; }
  /** @type {{ title?: string, starts_at?: string, stages?: string[] }} */
  const update = {};
  const title = /** @type {HTMLInputElement} */ (byId('edit-title-input')).value.trim();
  const stages = stagesOf(/** @type {HTMLInputElement} */ (byId('edit-stages')).value);
  if (title !== event.title) update.title = title;
  if (startsAt !== event.starts_at && localOf(startsAt) !== localOf(event.starts_at)) update.starts_at = startsAt;
  if (stages.join(',') !== event.stages.join(',')) update.stages = stages;
  if (Object.keys(update).length === 0) { /** @type {HTMLDialogElement} */ (byId('edit-dialog')).close(); return; }
  try {
    const saved = await api.updateEvent(event.id, update);
    if (saved && saved.id === event.id) {
      state.events = state.events.map((e) => (e.id === saved.id ? saved : e));
    } else {
      state.events = (await api.events()).events;
    }
    renderEvents();
    /** @type {HTMLDialogElement} */ (byId('edit-dialog')).close();
    say(`Event ${event.id} saved.`);
  } catch (error) {
    report(error, errorLine);
  }
}

// ---------------------------------------------------------------------------------------------
// Trigger

/** @type {string | null} */
let triggering = null;

/** @param {string} id */
function openTrigger(id) {
  const event = state.events.find((e) => e.id === id);
  if (!event) return;
  triggering = id;
  byId('trigger-event').textContent = `${event.title} (${event.id})`;
  const select = /** @type {HTMLSelectElement} */ (byId('trigger-stage'));
  select.replaceChildren(...event.stages.map((stage) => h('option', { value: stage }, stage)));
  // Suggest the stage after the current one.
  const next = event.stage === null ? 0 : Math.min(event.stages.indexOf(event.stage) + 1, event.stages.length - 1);
  select.selectedIndex = Math.max(next, 0);
  /** @type {HTMLTextAreaElement} */ (byId('trigger-payload')).value = '{}';
  /** @type {HTMLInputElement} */ (byId('trigger-window')).value = '';
  byId('trigger-error').textContent = '';
  updateTrigger();
  /** @type {HTMLDialogElement} */ (byId('trigger-dialog')).showModal();
  select.focus();
}

/** Keeps an open trigger dialog's figures (devices subscribed now) current. */
function refreshOpenTrigger() {
  if (/** @type {HTMLDialogElement} */ (byId('trigger-dialog')).open) updateTrigger();
}

/** Redraws the dialog's transition, subscribers, payload check and window; returns whether it may publish. */
function updateTrigger() {
  const event = state.events.find((e) => e.id === triggering);
  if (!event) return false;
  const to = /** @type {HTMLSelectElement} */ (byId('trigger-stage')).value;
  byId('trigger-transition').textContent = `${event.stage ?? '(no stage yet)'} → ${to}`;
  const subscribed = subscribersOf(state.stats, event.id);
  const nodes = state.stats?.nodes.length ?? 0;
  byId('trigger-subscribed').textContent = subscribed === null
    ? (state.stats ? `not counted yet: ${NOT_COUNTED}` : 'not known yet')
    : `${subscribed} device${subscribed === 1 ? '' : 's'} across ${nodes} node${nodes === 1 ? '' : 's'}`;

  const payloadInput = /** @type {HTMLTextAreaElement} */ (byId('trigger-payload'));
  const checked = checkPayload(payloadInput.value);
  const payloadError = byId('trigger-payload-error');
  payloadInput.setAttribute('aria-invalid', String(!checked.ok));
  payloadError.textContent = checked.ok ? '' : checked.message;
  byId('trigger-payload-hint').textContent = checked.ok
    ? `${checked.bytes} of ${PAYLOAD_MAX_BYTES} bytes`
    : `at most ${PAYLOAD_MAX_BYTES} bytes`;

  const windowInput = /** @type {HTMLInputElement} */ (byId('trigger-window'));
  const windowText = windowInput.value.trim();
  const windowHint = byId('trigger-window-hint');
  let windowOk = true;
  if (windowText === '') {
    const estimate = defaultFetchWindowMs(subscribed ?? 0);
    windowHint.textContent = `The server sizes it: about ${duration(estimate)} for ${subscribed ?? 0} subscribed devices ` +
      '(default sizing: 3,000 fetches/s at a 0.5 share, 1 s to 60 s; a deployment may set its own).';
  } else {
    const value = Number(windowText);
    windowOk = Number.isInteger(value) && value >= 0 && value <= FETCH_WITHIN_MAX_MS;
    windowHint.textContent = windowOk
      ? `Devices fetch the stage's content at a random moment within ${duration(value)} of the publish.`
      : `must be a whole number of milliseconds, 0 to ${FETCH_WITHIN_MAX_MS}`;
  }
  windowInput.setAttribute('aria-invalid', String(!windowOk));
  const ok = checked.ok && windowOk;
  /** @type {HTMLButtonElement} */ (byId('trigger-confirm')).disabled = !ok;
  byId('trigger-confirm').textContent = `Publish ${to}`;
  return ok;
}

async function confirmTrigger(/** @type {SubmitEvent} */ submit) {
  submit.preventDefault();
  const api = state.api;
  const event = state.events.find((e) => e.id === triggering);
  if (!api || !event || !updateTrigger()) return;
  const checked = checkPayload(/** @type {HTMLTextAreaElement} */ (byId('trigger-payload')).value);
  if (!checked.ok) return;
  const stage = /** @type {HTMLSelectElement} */ (byId('trigger-stage')).value;
  const windowText = /** @type {HTMLInputElement} */ (byId('trigger-window')).value.trim();
  /** @type {{ stage: string, payload: object, fetch_within_ms?: number }} */
  const request = { stage, payload: checked.value };
  if (windowText !== '') request.fetch_within_ms = Number(windowText);
  const confirm = /** @type {HTMLButtonElement} */ (byId('trigger-confirm'));
  confirm.disabled = true;
  try {
    const receipt = await api.publish(event.id, request);
    /** @type {HTMLDialogElement} */ (byId('trigger-dialog')).close();
    const unrecorded = receipt.recorded === false
      ? ' Devices have it; the event store has not recorded it yet (it is retried), so this list may show the previous state for a moment.'
      : '';
    say(`Published ${stage} to ${event.id}: version ${receipt.version} at ${clock(receipt.published_at_ms)}.${unrecorded}`);
    state.events = state.events.map((e) => (e.id === event.id
      ? { ...e, stage, version: receipt.version, published_at_ms: receipt.published_at_ms }
      : e));
    renderEvents();
    showBroadcasts(event.id, receipt.version);
    byId('report').scrollIntoView({ block: 'start' });
  } catch (error) {
    report(error, byId('trigger-error'));
  } finally {
    confirm.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Broadcast report

function renderBroadcasts() {
  const body = byId('broadcasts-table').querySelector('tbody');
  if (!body || !state.reportEvent) return;
  const event = state.reportEvent;
  replaceRows(body, state.broadcasts.map((b) => {
    const shown = (state.report?.version ?? null) === b.version;
    return h('tr', { class: shown ? 'selected' : undefined },
      h('td', { class: 'num' }, String(b.version)),
      h('td', {}, b.stage),
      h('td', {}, clock(b.published_at_ms)),
      h('td', { class: 'num' }, `${percent(b.acked_fraction)} (${b.acked} of ${Math.max(b.subscribed, b.sent)})`),
      h('td', { class: 'num' }, b.ack_latency ? `${b.ack_latency.p50_ms} / ${b.ack_latency.p99_ms} ms` : '—'),
      h('td', { class: 'num' }, `${b.nodes_applied} of ${b.nodes_reporting}`),
      h('td', {}, actionButton('Show', `broadcast version ${b.version}`, () => showBroadcasts(event, b.version))));
  }));
}

function renderReport() {
  const detail = byId('report-detail');
  const shown = state.report;
  if (!shown || shown.event !== state.reportEvent) { detail.hidden = true; return; }
  detail.hidden = false;
  byId('report-hint').textContent = '';
  const reached = Math.max(shown.subscribed, shown.sent);
  /** @type {[string, string][]} */
  const figures = [
    ['Broadcast', `version ${shown.version}, ${shown.stage}, published ${clock(shown.published_at_ms)}`],
    ['Acked', `${percent(shown.acked_fraction)} (${shown.acked} of ${reached} devices)`],
    ['Sent', `${shown.sent} frames to ${shown.subscribed} subscribed devices`],
    ['Ack latency', shown.ack_latency ? `p50 ${shown.ack_latency.p50_ms} ms, p90 ${shown.ack_latency.p90_ms} ms, p99 ${shown.ack_latency.p99_ms} ms` : 'no ack yet'],
    ['Nodes applied', `${shown.nodes_applied} of ${shown.nodes_reporting} reporting`],
  ];
  byId('report-figures').replaceChildren(...figures.flatMap(([name, value]) => [h('dt', {}, name), h('dd', { 'data-figure': name }, value)]));
  drawReach(shown);
  const nodes = byId('report-nodes').querySelector('tbody');
  // A node that reports the event but keeps no record of this version has zeros and
  // received_at_ms 0; `applied` then says whether it holds a newer version (docs/PROTOCOL.md).
  nodes?.replaceChildren(...shown.nodes.map((n) => {
    const recorded = n.received_at_ms !== 0;
    return h('tr', {},
      h('th', { scope: 'row' }, n.node),
      h('td', {}, badge(n.applied, n.applied ? (recorded ? 'applied' : 'holds a newer version') : 'not yet')),
      h('td', { class: 'num' }, String(n.subscribed)),
      h('td', { class: 'num' }, String(n.sent)),
      h('td', { class: 'num' }, String(n.acked)),
      h('td', {}, recorded
        ? `${clock(n.received_at_ms)} (+${Math.max(0, n.received_at_ms - shown.published_at_ms)} ms)`
        : 'no record of this version'));
  }));
  renderBroadcasts();
}

/**
 * @param {boolean} good
 * @param {string} text
 */
function badge(good, text) {
  return h('span', { class: `badge ${good ? 'yes' : 'no'}` }, text);
}

/** The reach curve: acked fraction (0 to 100 %) against seconds since the publish. */
function drawReach(/** @type {BroadcastReport} */ shown) {
  const plot = byId('reach-plot');
  const width = 640, height = 260, left = 48, right = 16, top = 14, bottom = 36;
  const innerW = width - left - right, innerH = height - top - bottom;
  const points = [{ ms: 0, acked_fraction: 0 }, ...shown.reach];
  const lastMs = Math.max(...points.map((p) => p.ms), 100);
  const spanMs = niceSpan(lastMs);
  const x = (/** @type {number} */ ms) => left + (ms / spanMs) * innerW;
  const y = (/** @type {number} */ f) => top + (1 - Math.min(Math.max(f, 0), 1)) * innerH;
  const parts = [];
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(svg('line', { class: 'plot-grid', x1: left, x2: width - right, y1: y(f), y2: y(f) }));
    parts.push(svg('text', { class: 'plot-label', x: left - 6, y: y(f) + 4, 'text-anchor': 'end' }, `${f * 100} %`));
  }
  for (let i = 0; i <= 4; i++) {
    const ms = (spanMs / 4) * i;
    parts.push(svg('text', { class: 'plot-label', x: x(ms), y: height - bottom + 16, 'text-anchor': 'middle' }, seconds(ms, spanMs)));
  }
  parts.push(svg('text', { class: 'plot-label', x: left + innerW / 2, y: height - 4, 'text-anchor': 'middle' }, 'seconds since publish'));
  parts.push(svg('line', { class: 'plot-axis', x1: left, x2: left, y1: top, y2: top + innerH }));
  parts.push(svg('line', { class: 'plot-axis', x1: left, x2: width - right, y1: top + innerH, y2: top + innerH }));
  const line = points.map((p) => `${x(p.ms).toFixed(1)},${y(p.acked_fraction).toFixed(1)}`).join(' ');
  const last = points[points.length - 1];
  parts.push(svg('polygon', { class: 'plot-area', points: `${x(0)},${y(0)} ${line} ${x(last.ms)},${y(0)}` }));
  parts.push(svg('polyline', { class: 'plot-line', points: line }));
  for (const p of shown.reach) parts.push(svg('circle', { class: 'plot-point', cx: x(p.ms), cy: y(p.acked_fraction), r: 3 }));
  plot.replaceChildren(...parts);
  byId('reach-caption').textContent = shown.reach.length === 0
    ? 'Reach: no ack yet.'
    : `Reach: ${percent(last.acked_fraction)} acked ${seconds(last.ms, spanMs)} s after the publish.`;
}

/**
 * Seconds, with as many decimals as the axis span needs (0.025 on a 0.1 s axis, 1.5 on 5 s).
 * @param {number} ms
 * @param {number} [spanMs]
 */
function seconds(ms, spanMs = ms) {
  const decimals = spanMs < 1000 ? 3 : spanMs < 10_000 ? 1 : 0;
  const text = (ms / 1000).toFixed(decimals);
  return decimals === 0 ? text : text.replace(/0+$/, '').replace(/\.$/, '');
}

/** A round span at least `ms` long, so the axis ticks fall on readable values. */
function niceSpan(/** @type {number} */ ms) {
  for (const span of [100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 30_000, 60_000, 120_000, 300_000, 600_000]) {
    if (ms <= span) return span;
  }
  return Math.ceil(ms / 600_000) * 600_000;
}

// ---------------------------------------------------------------------------------------------
// Fleet

function renderFleet() {
  const body = byId('nodes-table').querySelector('tbody');
  if (!body) return;
  const protection = state.protection;
  const nodes = state.stats?.nodes ?? [];
  replaceRows(body, nodes.map((node) => {
    // Every node reports its own shed counts (older nodes report none).
    const shed = node.shed
      ? `${node.shed.critical} / ${node.shed.degraded} / ${node.shed.best_effort} / ${node.shed.bulk}`
      : '—';
    const drain = node.drain
      ? `${node.drain.goaways_sent} of ${node.drain.sessions_at_start} told to go, ${node.drain.sessions_left} left` +
        (node.drain.sessions_cut ? `, ${node.drain.sessions_cut} cut` : '')
      : '—';
    return h('tr', { 'data-node': node.node },
      h('th', { scope: 'row' }, node.node),
      h('td', {}, node.address ?? '—'),
      h('td', { class: 'num' }, String(node.connections)),
      h('td', {}, badge(node.ready !== false, node.ready !== false ? 'ready' : 'not ready')),
      h('td', {}, node.last_seen_ms_ago === undefined ? 'this process' : `${duration(node.last_seen_ms_ago)} ago`),
      h('td', {}, drain),
      h('td', { class: 'num' }, shed),
      h('td', {}, actionButton('Drain…', `node ${node.node}`, () => openDrain(node.node))));
  }));
  const summary = byId('protection-summary');
  if (protection) {
    const reasons = protection.reasons.length ? ` (${protection.reasons.join(', ')})` : '';
    summary.textContent = `Protection on ${protection.node}: ${protection.protection}, ruleset ${protection.ruleset}` +
      `${protection.active ? `, active${reasons}` : ', inactive'}; limit ${protection.limit}, in flight ${protection.in_flight}.`;
  }
}

/** @type {string | null} */
let draining = null;

/** @param {string} node */
function openDrain(node) {
  draining = node;
  const stats = state.stats?.nodes.find((n) => n.node === node);
  byId('drain-title').textContent = `Drain node ${node}`;
  byId('drain-text').textContent = `Node ${node} will tell its ${stats?.connections ?? 0} connected devices to go ` +
    'to another node, paced over its drain window, and stop accepting new ones. This cannot be undone from the console.';
  byId('drain-error').textContent = '';
  /** @type {HTMLDialogElement} */ (byId('drain-dialog')).showModal();
}

async function confirmDrain(/** @type {SubmitEvent} */ submit) {
  submit.preventDefault();
  const api = state.api;
  if (!api || !draining) return;
  try {
    const answer = await api.drain(draining);
    /** @type {HTMLDialogElement} */ (byId('drain-dialog')).close();
    say(`Node ${answer.node}: drain ${answer.state}.`);
    void refreshAll();
  } catch (error) {
    report(error, byId('drain-error'));
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring

function wire() {
  byId('sign-in-form').addEventListener('submit', (submit) => {
    submit.preventDefault();
    const token = /** @type {HTMLInputElement} */ (byId('token')).value.trim();
    if (token === '') { byId('sign-in-error').textContent = 'Enter the admin token.'; return; }
    void signIn(token, false);
  });
  byId('sign-out').addEventListener('click', () => signOut());
  byId('create-form').addEventListener('submit', (e) => void createEvent(/** @type {SubmitEvent} */ (e)));
  byId('edit-form').addEventListener('submit', (e) => void saveEdit(/** @type {SubmitEvent} */ (e)));
  byId('trigger-form').addEventListener('submit', (e) => void confirmTrigger(/** @type {SubmitEvent} */ (e)));
  byId('drain-form').addEventListener('submit', (e) => void confirmDrain(/** @type {SubmitEvent} */ (e)));
  for (const [button, dialog] of [['edit-cancel', 'edit-dialog'], ['trigger-cancel', 'trigger-dialog'], ['drain-cancel', 'drain-dialog']]) {
    byId(button).addEventListener('click', () => /** @type {HTMLDialogElement} */ (byId(dialog)).close());
  }
  for (const dialog of document.querySelectorAll('dialog')) {
    dialog.addEventListener('close', () => { if (state.api) returnFocus(); });
  }
  for (const id of ['trigger-stage', 'trigger-payload', 'trigger-window']) {
    byId(id).addEventListener('input', () => updateTrigger());
  }
  defaultStartsAt();
  // Never a blank page: anything unexpected is said in the status line.
  window.addEventListener('error', (e) => say(`Console error: ${e.message}`, true));
  window.addEventListener('unhandledrejection', (e) => say(`Console error: ${messageOf(e.reason)}`, true));
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) void signIn(saved, true);
  else byId('token').focus();
}

wire();
