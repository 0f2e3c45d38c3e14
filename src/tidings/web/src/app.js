// The Tidings chat app: accounts, rooms, a timeline per room, presence, typing,
// notifications and the connection's status, over the centrifuge SDK.

import { Centrifuge, UnauthorizedError } from 'centrifuge';
import {
  api,
  currentSession,
  describeError,
  onSessionChange,
  refresh,
  SessionEnded,
  signIn,
  signOut,
  signUp,
} from './auth.js';
import { $, h, replaceChildren, shortTime, visibleText } from './dom.js';
import { Timeline } from './timeline.js';

const TYPING_METHOD = 'tidings.typing';
const TYPING_SEND_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 4000;
const TOAST_MS = 6000;
const MAX_NOTIFICATIONS = 50;
// Subscription end codes of the SDK itself (unsubscribe called, unauthorized,
// client closed): anything else is the server ending it (left, not a member).
const CLIENT_UNSUBSCRIBE_CODES = new Set([0, 1, 2]);

const ui = {
  auth: $('#auth'),
  authForm: $('#auth-form'),
  authTitle: $('#auth-title'),
  authSubmit: $('#auth-submit'),
  authSwitch: $('#auth-switch'),
  authError: $('#auth-error'),
  app: $('#app'),
  status: $('#status'),
  me: $('#me'),
  signOut: $('#sign-out'),
  menu: $('#menu-toggle'),
  roomList: $('#room-list'),
  otherRooms: $('#other-rooms'),
  refreshRooms: $('#refresh-rooms'),
  newRoom: $('#new-room'),
  newRoomError: $('#new-room-error'),
  empty: $('#empty-state'),
  roomView: $('#room-view'),
  roomName: $('#room-name'),
  leave: $('#leave-room'),
  peopleToggle: $('#people-toggle'),
  scroller: $('#timeline'),
  messages: $('#messages'),
  pending: $('#pending'),
  earlier: $('#load-earlier'),
  start: $('#history-start'),
  timelineError: $('#timeline-error'),
  typing: $('#typing'),
  composer: $('#composer'),
  compose: $('#compose'),
  online: $('#online'),
  onlineCount: $('#online-count'),
  notifToggle: $('#notif-toggle'),
  notifCount: $('#notif-count'),
  notifPanel: $('#notifications'),
  notifList: $('#notification-list'),
  notifEmpty: $('#notifications-empty'),
  toasts: $('#toasts'),
};

/** One room the user is a member of: its subscription, unread ids, presence, typing. */
class RoomState {
  constructor(room) {
    this.room = room;
    this.sub = null;
    this.unread = new Set();
    this.presence = new Map(); // client id -> user
    this.presenceQueue = null; // join/leave events that arrive while presence loads
    this.typing = new Map(); // user -> timer
    this.pending = []; // messages being sent, or that failed
  }
}

let client = null;
let notificationSub = null;
let me = null;
let everConnected = false;
const rooms = new Map(); // room id -> RoomState
let otherRooms = [];
let active = null; // the open room's RoomState
let timeline = null; // its Timeline
let notifications = [];
let unseenNotifications = 0;
let lastTypingSent = 0;

// --- the connection's status ----------------------------------------------

const STATUS_LABELS = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};

function setStatus(state, detail = '') {
  ui.status.dataset.state = state;
  ui.status.textContent = STATUS_LABELS[state];
  ui.status.title = detail;
  // Who is online is only known while connected: dim the list meanwhile.
  ui.online.classList.toggle('stale', state !== 'connected');
}

window.addEventListener('offline', () => {
  if (client && client.state !== 'connected') setStatus('offline', 'the network is down');
});

// --- read positions (kept per browser) ------------------------------------

function readKey() {
  return `tidings.read.${me}`;
}

function readPositions() {
  try {
    return JSON.parse(localStorage.getItem(readKey()) || '{}') || {};
  } catch {
    return {};
  }
}

function lastRead(roomId) {
  const value = readPositions()[roomId];
  return Number.isSafeInteger(value) ? value : 0;
}

function markRead() {
  if (!active || !timeline || timeline.newest === null || document.hidden) return;
  const positions = readPositions();
  if ((positions[active.room.id] || 0) < timeline.newest) {
    positions[active.room.id] = timeline.newest;
    localStorage.setItem(readKey(), JSON.stringify(positions));
  }
  if (active.unread.size) {
    active.unread.clear();
    renderRooms();
  }
}

document.addEventListener('visibilitychange', markRead);

// --- signing in and out ---------------------------------------------------

let signingUp = false;

function showAuth(message = '') {
  ui.app.hidden = true;
  ui.auth.hidden = false;
  ui.authError.textContent = message;
  ui.authForm.elements.username.focus();
}

function setAuthMode(up) {
  signingUp = up;
  ui.authTitle.textContent = up ? 'Create an account' : 'Sign in';
  ui.authSubmit.textContent = up ? 'Create account' : 'Sign in';
  ui.authSwitch.textContent = up ? 'I have an account: sign in' : 'New here? Create an account';
  ui.authForm.elements.password.autocomplete = up ? 'new-password' : 'current-password';
  ui.authError.textContent = '';
}

ui.authSwitch.addEventListener('click', () => setAuthMode(!signingUp));

ui.authForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = ui.authForm.elements;
  const name = form.username.value.trim();
  const password = form.password.value;
  ui.authSubmit.disabled = true;
  ui.authError.textContent = '';
  try {
    const session = signingUp ? await signUp(name, password) : await signIn(name, password);
    form.password.value = '';
    startApp(session);
  } catch (error) {
    ui.authError.textContent = describeError(error);
  } finally {
    ui.authSubmit.disabled = false;
  }
});

ui.signOut.addEventListener('click', () => signOut());

onSessionChange((session) => {
  if (!session && client) stopApp('You are signed out.');
});

function stopApp(message) {
  const old = client;
  client = null;
  notificationSub = null;
  if (old) old.disconnect();
  for (const state of rooms.values()) clearTyping(state);
  rooms.clear();
  closeRoom();
  everConnected = false;
  notifications = [];
  unseenNotifications = 0;
  showAuth(message);
}

// --- the connection -------------------------------------------------------

function websocketUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/connection/websocket`;
}

async function getToken() {
  try {
    return (await refresh()).access;
  } catch (error) {
    if (error instanceof SessionEnded) throw new UnauthorizedError(error.message);
    throw error; // the SDK tries again later
  }
}

function startApp(session) {
  me = session.user;
  ui.auth.hidden = true;
  ui.app.hidden = false;
  ui.me.textContent = me;
  setStatus('connecting');
  renderNotifications();
  const centrifuge = new Centrifuge(websocketUrl(), {
    token: session.access,
    getToken,
    name: 'tidings-web',
  });
  client = centrifuge;
  centrifuge.on('connecting', (ctx) => {
    if (client !== centrifuge) return;
    const offline = navigator.onLine === false;
    setStatus(offline ? 'offline' : everConnected ? 'reconnecting' : 'connecting', ctx.reason);
  });
  centrifuge.on('connected', () => {
    if (client !== centrifuge) return;
    const again = everConnected;
    everConnected = true;
    setStatus('connected');
    if (again) loadRooms(); // rooms made or joined elsewhere meanwhile
  });
  centrifuge.on('disconnected', (ctx) => {
    if (client !== centrifuge) return;
    setStatus('offline', ctx.reason);
  });

  // Personal notifications: send_notification publishes to notifications#<user>.
  notificationSub = centrifuge.newSubscription(`notifications#${me}`);
  notificationSub.on('publication', (ctx) => onNotification(ctx.data));
  notificationSub.subscribe();
  centrifuge.connect();
  loadRooms().then(() => {
    const wanted = roomFromHash();
    if (wanted && rooms.has(wanted)) openRoom(wanted);
    else if (!active && rooms.size && !isNarrow()) openRoom(rooms.keys().next().value);
  });
}

// --- rooms ----------------------------------------------------------------

async function loadRooms() {
  let body;
  try {
    body = await api('/rooms');
  } catch (error) {
    if (!(error instanceof SessionEnded)) toast('Could not load rooms', describeError(error));
    return;
  }
  if (!client) return;
  const member = new Set();
  for (const room of body.rooms) {
    if (!room.member) continue;
    member.add(room.id);
    const state = rooms.get(room.id);
    if (state) state.room = room;
    else addRoom(room);
  }
  for (const [id, state] of rooms) if (!member.has(id)) dropRoom(state);
  otherRooms = body.rooms.filter((room) => !room.member);
  renderRooms();
}

function addRoom(room) {
  const state = new RoomState(room);
  rooms.set(room.id, state);
  const sub = client.newSubscription(room.channel);
  state.sub = sub;
  sub.on('subscribed', (ctx) => onRoomSubscribed(state, ctx));
  sub.on('publication', (ctx) => onRoomPublication(state, ctx));
  sub.on('join', (ctx) => onPresenceEvent(state, 'join', ctx.info));
  sub.on('leave', (ctx) => onPresenceEvent(state, 'leave', ctx.info));
  sub.on('unsubscribed', (ctx) => {
    if (CLIENT_UNSUBSCRIBE_CODES.has(ctx.code) || rooms.get(state.room.id) !== state) return;
    // The server ended it: the room was left (maybe in another tab) or is gone.
    dropRoom(state);
    loadRooms();
  });
  sub.subscribe();
  return state;
}

function dropRoom(state) {
  rooms.delete(state.room.id);
  clearTyping(state);
  if (state.sub && client) client.removeSubscription(state.sub);
  state.sub = null;
  if (active === state) closeRoom();
}

function onRoomSubscribed(state, ctx) {
  loadPresence(state);
  if (ctx.wasRecovering && ctx.recovered) return; // the missed publications follow
  if (active === state && timeline) timeline.sync();
  else countUnread(state);
}

async function countUnread(state) {
  const after = lastRead(state.room.id);
  try {
    const query = new URLSearchParams({ after, limit: 100 });
    const body = await api(`/rooms/${encodeURIComponent(state.room.id)}/messages?${query}`);
    for (const message of body.messages) if (message.user !== me) state.unread.add(message.id);
    if (active === state) state.unread.clear();
    renderRooms();
  } catch {
    // unread counts are a nicety: the next reconnect tries again
  }
}

// Who sent what is only taken from the server: a publication that a client made
// over the protocol carries that client's `info` (stamped by the server), while
// stored messages are published by the server itself, without `info`. So a
// "message" with `info` is some client's forgery and is dropped, and typing
// events name the user of their `info`, never what their data claims.
function onRoomPublication(state, ctx) {
  const data = ctx.data;
  if (!data || typeof data !== 'object') return;
  if (data.type === 'typing') {
    const user = ctx.info && ctx.info.user;
    if (user && user !== me) showTyping(state, user);
    return;
  }
  if (ctx.info) return;
  if (data.type === 'message' && Number.isSafeInteger(data.id)) {
    stopTyping(state, data.user);
    if (active === state && timeline) {
      timeline.add([data]);
    } else if (data.user !== me && data.id > lastRead(state.room.id)) {
      state.unread.add(data.id);
      renderRooms();
    }
    return;
  }
  // Anything else (a broadcast from the server API, say) is shown, not stored.
  if (typeof data.text === 'string' && active === state && timeline) timeline.announce(data.text);
}

function renderRooms() {
  const items = [...rooms.values()].map((state) => {
    const count = state.unread.size;
    return h(
      'li',
      {},
      h(
        'button',
        {
          type: 'button',
          class: state === active ? 'room-link active' : 'room-link',
          dataset: { room: state.room.id },
          'aria-current': state === active ? 'page' : null,
          on: { click: () => openRoom(state.room.id) },
        },
        h('span', { class: 'room-name', dir: 'auto', text: visibleText(state.room.name) }),
        state.room.private ? h('span', { class: 'private', text: 'private' }) : null,
        count
          ? h('span', {
              class: 'unread',
              'aria-label': `${count} unread`,
              text: count > 99 ? '99+' : String(count),
            })
          : null,
      ),
    );
  });
  replaceChildren(ui.roomList, items.length ? items : h('li', { class: 'hint', text: 'No rooms yet' }));
  const others = otherRooms.map((room) =>
    h(
      'li',
      { class: 'other-room' },
      h('span', { class: 'room-name', dir: 'auto', text: visibleText(room.name) }),
      h('button', {
        type: 'button',
        class: 'small',
        dataset: { join: room.id },
        text: 'Join',
        on: { click: () => joinRoom(room.id) },
      }),
    ),
  );
  replaceChildren(ui.otherRooms, others.length ? others : h('li', { class: 'hint', text: 'None' }));
  const total = [...rooms.values()].reduce((sum, state) => sum + state.unread.size, 0);
  document.title = total ? `(${total}) Tidings` : 'Tidings';
}

async function joinRoom(id) {
  try {
    const room = await api(`/rooms/${encodeURIComponent(id)}/join`, { method: 'POST' });
    otherRooms = otherRooms.filter((r) => r.id !== id);
    if (!rooms.has(room.id)) addRoom(room);
    openRoom(room.id);
  } catch (error) {
    toast('Could not join the room', describeError(error));
  }
}

async function leaveRoom() {
  const state = active;
  if (!state) return;
  try {
    await api(`/rooms/${encodeURIComponent(state.room.id)}/leave`, { method: 'POST' });
    dropRoom(state);
    await loadRooms();
  } catch (error) {
    toast('Could not leave the room', describeError(error));
  }
}

ui.leave.addEventListener('click', leaveRoom);
ui.refreshRooms.addEventListener('click', () => loadRooms());

ui.newRoom.addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = ui.newRoom.elements;
  const name = form.name.value.trim();
  if (!name) return;
  ui.newRoomError.textContent = '';
  try {
    const room = await api('/rooms', { method: 'POST', json: { name, private: form.private.checked } });
    form.name.value = '';
    form.private.checked = false;
    if (!rooms.has(room.id)) addRoom(room);
    renderRooms();
    openRoom(room.id);
  } catch (error) {
    ui.newRoomError.textContent = describeError(error);
  }
});

// --- the open room --------------------------------------------------------

function roomFromHash() {
  const match = /^#room=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

window.addEventListener('hashchange', () => {
  const id = roomFromHash();
  if (id && rooms.has(id) && (!active || active.room.id !== id)) openRoom(id);
});

function openRoom(id) {
  const state = rooms.get(id);
  if (!state) return;
  if (timeline) timeline.close();
  active = state;
  history.replaceState(null, '', `#room=${encodeURIComponent(id)}`);
  ui.app.dataset.panel = '';
  ui.empty.hidden = true;
  ui.roomView.hidden = false;
  ui.roomName.textContent = visibleText(state.room.name);
  timeline = new Timeline(
    state.room,
    me,
    {
      scroller: ui.scroller,
      list: ui.messages,
      earlier: ui.earlier,
      start: ui.start,
      error: ui.timelineError,
    },
    markRead,
  );
  replaceChildren(ui.pending, state.pending.map((p) => p.el));
  state.unread.clear();
  renderRooms();
  renderPresence();
  renderTyping();
  timeline.sync().then(markRead);
  if (!isNarrow()) ui.compose.focus();
}

function closeRoom() {
  if (timeline) timeline.close();
  timeline = null;
  active = null;
  ui.roomView.hidden = true;
  ui.empty.hidden = false;
  replaceChildren(ui.messages);
  replaceChildren(ui.pending);
  renderPresence();
  if (roomFromHash()) history.replaceState(null, '', location.pathname);
}

ui.earlier.addEventListener('click', () => timeline && timeline.loadEarlier());

// --- sending --------------------------------------------------------------

/** A message on its way to the server; if that fails it stays, with Retry. */
class Pending {
  constructor(state, text) {
    this.state = state;
    this.text = text;
    this.note = h('span', { class: 'note', text: 'sending…' });
    this.actions = h('span', { class: 'actions' });
    this.el = h(
      'li',
      { class: 'message mine pending' },
      h('div', { class: 'meta' }, h('span', { class: 'author', text: me }), this.note, this.actions),
      h('div', { class: 'text', dir: 'auto', text: visibleText(text) }),
    );
    state.pending.push(this);
  }

  remove() {
    this.state.pending = this.state.pending.filter((p) => p !== this);
    this.el.remove();
  }

  async send() {
    this.el.classList.remove('failed');
    this.el.removeAttribute('role');
    this.note.textContent = 'sending…';
    replaceChildren(this.actions);
    try {
      const url = `/rooms/${encodeURIComponent(this.state.room.id)}/messages`;
      const body = await api(url, { method: 'POST', json: { text: this.text } });
      this.remove();
      if (active === this.state && timeline) timeline.add([body.message]);
      if (!body.delivered) {
        toast('Saved, not delivered live', 'Others will see it when they reload the room.');
      }
    } catch (error) {
      this.el.classList.add('failed');
      this.el.setAttribute('role', 'alert');
      this.note.textContent = `Not sent: ${describeError(error)}`;
      replaceChildren(
        this.actions,
        h('button', { type: 'button', class: 'small', text: 'Retry', on: { click: () => this.send() } }),
        h('button', { type: 'button', class: 'small', text: 'Discard', on: { click: () => this.remove() } }),
      );
    }
  }
}

function sendMessage() {
  const text = ui.compose.value;
  if (!active || !text.trim()) return;
  ui.compose.value = '';
  autosize();
  const pending = new Pending(active, text);
  ui.pending.append(pending.el);
  if (timeline) timeline.scrollToBottom();
  pending.send();
}

function autosize() {
  ui.compose.style.height = 'auto';
  ui.compose.style.height = `${Math.min(ui.compose.scrollHeight, 160)}px`;
}

ui.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  sendMessage();
  ui.compose.focus();
});

ui.compose.addEventListener('keydown', (event) => {
  // Enter sends, Shift+Enter starts a new line; never in the middle of an IME composition.
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});

ui.compose.addEventListener('input', () => {
  autosize();
  const now = Date.now();
  if (!active || !ui.compose.value.trim() || now - lastTypingSent < TYPING_SEND_EVERY_MS) return;
  if (!client || client.state !== 'connected' || active.sub.state !== 'subscribed') return;
  lastTypingSent = now;
  client.rpc(TYPING_METHOD, { room: active.room.id }).catch(() => {});
});

// --- typing indicator -----------------------------------------------------

function showTyping(state, user) {
  clearTimeout(state.typing.get(user));
  state.typing.set(
    user,
    setTimeout(() => stopTyping(state, user), TYPING_SHOWN_MS),
  );
  if (state === active) renderTyping();
}

function stopTyping(state, user) {
  if (!state.typing.has(user)) return;
  clearTimeout(state.typing.get(user));
  state.typing.delete(user);
  if (state === active) renderTyping();
}

function clearTyping(state) {
  for (const timer of state.typing.values()) clearTimeout(timer);
  state.typing.clear();
}

function renderTyping() {
  const users = active ? [...active.typing.keys()].sort() : [];
  let text = '';
  if (users.length === 1) text = `${users[0]} is typing…`;
  else if (users.length === 2) text = `${users[0]} and ${users[1]} are typing…`;
  else if (users.length > 2) text = 'Several people are typing…';
  ui.typing.textContent = text;
}

// --- presence -------------------------------------------------------------

async function loadPresence(state) {
  const queue = [];
  state.presenceQueue = queue;
  try {
    const result = await state.sub.presence();
    if (state.presenceQueue !== queue) return; // a newer load took over
    state.presence = new Map(Object.entries(result.clients).map(([id, info]) => [id, info.user]));
    for (const [kind, info] of queue) applyPresence(state, kind, info);
  } catch {
    // keep what we had; the next subscribe loads it again
  } finally {
    if (state.presenceQueue === queue) state.presenceQueue = null;
  }
  if (state === active) renderPresence();
}

function applyPresence(state, kind, info) {
  if (kind === 'join') state.presence.set(info.client, info.user);
  else state.presence.delete(info.client);
}

function onPresenceEvent(state, kind, info) {
  if (state.presenceQueue) state.presenceQueue.push([kind, info]);
  applyPresence(state, kind, info);
  if (kind === 'leave' && ![...state.presence.values()].includes(info.user)) {
    stopTyping(state, info.user);
  }
  if (state === active) renderPresence();
}

function renderPresence() {
  const users = active ? [...new Set(active.presence.values())].sort() : [];
  replaceChildren(
    ui.online,
    users.map((user) =>
      h(
        'li',
        { class: user === me ? 'person self' : 'person', dataset: { user } },
        h('span', { class: 'dot', 'aria-hidden': 'true' }),
        h('span', { class: 'name', text: user }),
        user === me ? h('span', { class: 'you', text: ' (you)' }) : null,
      ),
    ),
  );
  ui.onlineCount.textContent = String(users.length);
}

// --- notifications --------------------------------------------------------

function describeNotification(data) {
  if (typeof data === 'string') return { title: 'Notification', text: data };
  if (data && typeof data === 'object' && !Array.isArray(data)) {
    const title = typeof data.title === 'string' ? data.title : 'Notification';
    const text = [data.text, data.body, data.message].find((v) => typeof v === 'string');
    return { title, text: text ?? JSON.stringify(data) };
  }
  return { title: 'Notification', text: JSON.stringify(data) };
}

function onNotification(data) {
  const notification = { ...describeNotification(data), at: new Date().toISOString() };
  notifications.unshift(notification);
  notifications = notifications.slice(0, MAX_NOTIFICATIONS);
  if (ui.notifPanel.hidden) unseenNotifications++;
  renderNotifications();
  toast(notification.title, notification.text, 'notification');
}

function renderNotifications() {
  ui.notifCount.textContent = unseenNotifications ? String(unseenNotifications) : '';
  ui.notifCount.hidden = !unseenNotifications;
  ui.notifEmpty.hidden = notifications.length > 0;
  replaceChildren(
    ui.notifList,
    notifications.map((n) =>
      h(
        'li',
        { class: 'notification' },
        h('strong', { dir: 'auto', text: visibleText(n.title) }),
        h('time', { datetime: n.at, text: shortTime(n.at) }),
        h('p', { dir: 'auto', text: visibleText(n.text) }),
      ),
    ),
  );
}

ui.notifToggle.addEventListener('click', () => {
  ui.notifPanel.hidden = !ui.notifPanel.hidden;
  ui.notifToggle.setAttribute('aria-expanded', String(!ui.notifPanel.hidden));
  if (!ui.notifPanel.hidden) unseenNotifications = 0;
  renderNotifications();
});

function toast(title, text, kind = 'error') {
  const el = h(
    'div',
    { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('strong', { dir: 'auto', text: visibleText(title) }),
    h('p', { dir: 'auto', text: visibleText(text) }),
    h('button', {
      type: 'button',
      class: 'close',
      'aria-label': 'Dismiss',
      text: '×',
      on: { click: () => el.remove() },
    }),
  );
  ui.toasts.append(el);
  setTimeout(() => el.remove(), TOAST_MS);
}

// --- narrow screens: rooms and people in drawers --------------------------

function isNarrow() {
  return window.matchMedia('(max-width: 720px)').matches;
}

function togglePanel(name) {
  ui.app.dataset.panel = ui.app.dataset.panel === name ? '' : name;
}

ui.menu.addEventListener('click', () => togglePanel('rooms'));
ui.peopleToggle.addEventListener('click', () => togglePanel('people'));
for (const button of document.querySelectorAll('.drawer-close')) {
  button.addEventListener('click', () => {
    ui.app.dataset.panel = '';
  });
}
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape') {
    ui.app.dataset.panel = '';
    ui.notifPanel.hidden = true;
    ui.notifToggle.setAttribute('aria-expanded', 'false');
  }
});

// --- start ----------------------------------------------------------------

setAuthMode(false);
const saved = currentSession();
if (saved) startApp(saved);
else showAuth();
