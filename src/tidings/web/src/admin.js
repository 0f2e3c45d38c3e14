// The operator's page: this node's clients, channels and message rates (from
// the hub's counters, via /admin/api/stats), and forms to send a notification
// to a user or a broadcast to channels. Admins only: the API answers 403 to others.

import {
  api,
  ApiError,
  currentSession,
  describeError,
  onSessionChange,
  signIn,
  signOut,
} from './auth.js';
import { $, h, replaceChildren, visibleText } from './dom.js';

const POLL_MS = 2000;

const ui = {
  auth: $('#auth'),
  authForm: $('#auth-form'),
  authError: $('#auth-error'),
  admin: $('#admin'),
  me: $('#me'),
  signOut: $('#sign-out'),
  denied: $('#denied'),
  dashboard: $('#dashboard'),
  statsError: $('#stats-error'),
  node: $('#node'),
  numClients: $('#num-clients'),
  numUsers: $('#num-users'),
  numChannels: $('#num-channels'),
  rateIn: $('#rate-in'),
  rateOut: $('#rate-out'),
  ratePub: $('#rate-pub'),
  channels: $('#channels'),
  channelsTotal: $('#channels-total'),
  clients: $('#clients'),
  clientsTotal: $('#clients-total'),
  notifyForm: $('#notify-form'),
  broadcastForm: $('#broadcast-form'),
};

let timer = null;

function showAuth(message = '') {
  stopPolling();
  ui.admin.hidden = true;
  ui.auth.hidden = false;
  ui.authError.textContent = message;
}

function showDashboard(session) {
  ui.auth.hidden = true;
  ui.admin.hidden = false;
  ui.me.textContent = session.user;
  poll();
}

function stopPolling() {
  clearTimeout(timer);
  timer = null;
}

async function poll() {
  stopPolling();
  try {
    render(await api('/admin/api/stats'));
    ui.statsError.textContent = '';
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      ui.denied.hidden = false;
      ui.denied.textContent = `${currentSession()?.user ?? 'This user'} is not an operator (admins only).`;
      ui.dashboard.hidden = true;
      return;
    }
    ui.statsError.textContent = `Could not read the stats: ${describeError(error)}`;
  }
  if (currentSession()) timer = setTimeout(poll, POLL_MS);
}

const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

function render(stats) {
  ui.denied.hidden = true;
  ui.dashboard.hidden = false;
  const node = stats.node;
  ui.node.textContent = `Node ${node.name} · version ${node.version} · up ${node.uptime} s`;
  ui.numClients.textContent = number.format(node.num_clients);
  ui.numUsers.textContent = number.format(node.num_users);
  ui.numChannels.textContent = number.format(node.num_channels);
  ui.rateIn.textContent = number.format(stats.rates.messages_in);
  ui.rateOut.textContent = number.format(stats.rates.messages_out);
  ui.ratePub.textContent = number.format(stats.rates.publications_in);
  ui.channelsTotal.textContent = `(${stats.channels_total})`;
  replaceChildren(
    ui.channels,
    stats.channels.map((c) =>
      h(
        'tr',
        {},
        h('td', { class: 'mono', text: visibleText(c.channel) }),
        h('td', { class: 'num', text: String(c.subscribers) }),
      ),
    ),
  );
  ui.clientsTotal.textContent = `(${stats.clients_total})`;
  replaceChildren(
    ui.clients,
    stats.clients.map((c) =>
      h(
        'tr',
        {},
        h('td', { text: c.user || '(anonymous)' }),
        h('td', { class: 'mono', text: c.client }),
        h('td', { class: 'mono', text: c.channels.join(', ') }),
        h('td', { class: 'num', text: String(c.queued_bytes) }),
      ),
    ),
  );
}

function result(form, text, bad = false) {
  const el = form.querySelector('.result');
  el.textContent = text;
  el.classList.toggle('bad', bad);
}

ui.notifyForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = ui.notifyForm.elements;
  const data = { text: form.text.value };
  if (form.title.value.trim()) data.title = form.title.value.trim();
  try {
    const body = await api('/admin/api/notify', {
      method: 'POST',
      json: { user: form.user.value.trim(), data },
    });
    result(ui.notifyForm, `Sent to ${body.channel}.`);
    form.text.value = '';
  } catch (error) {
    result(ui.notifyForm, `Not sent: ${describeError(error)}`, true);
  }
});

ui.broadcastForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = ui.broadcastForm.elements;
  const channels = form.channels.value
    .split(',')
    .map((c) => c.trim())
    .filter(Boolean);
  try {
    const body = await api('/admin/api/broadcast', {
      method: 'POST',
      json: { channels, data: { text: form.text.value } },
    });
    result(ui.broadcastForm, `Sent to ${body.results.length} channel(s).`);
    form.text.value = '';
  } catch (error) {
    result(ui.broadcastForm, `Not sent: ${describeError(error)}`, true);
  }
});

ui.authForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = ui.authForm.elements;
  try {
    const session = await signIn(form.username.value.trim(), form.password.value);
    form.password.value = '';
    showDashboard(session);
  } catch (error) {
    ui.authError.textContent = describeError(error);
  }
});

ui.signOut.addEventListener('click', () => signOut());
onSessionChange((session) => {
  if (!session) showAuth('You are signed out.');
});
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && currentSession() && !ui.admin.hidden && timer) poll();
});

const saved = currentSession();
if (saved) showDashboard(saved);
else showAuth();
