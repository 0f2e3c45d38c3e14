// Accounts: sign up (/register), sign in (/token, password grant), refresh
// (/token, refresh grant) and sign out (/logout), and an HTTP helper that sends
// the access token and refreshes it once on a 401.
//
// The server rotates refresh tokens and revokes a whole login when one is spent
// twice, so refreshes never run concurrently: one at a time in this tab (a
// shared promise) and across tabs (a Web Lock, where the browser has them;
// inside it, a token another tab already refreshed is taken over, not spent again).

const STORAGE_KEY = 'tidings.session';
const LOCK = 'tidings.token-refresh';
// Refresh an access token this long before it expires (at most a third of its life).
const EARLY_MS = 30_000;

/** The server refused the request; `status` is the HTTP status. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The login is over (refresh token revoked, expired or unknown): sign in again. */
export class SessionEnded extends Error {}

let session = load();
let refreshing = null;
const listeners = new Set();

function load() {
  try {
    const value = JSON.parse(localStorage.getItem(STORAGE_KEY) || 'null');
    return value && value.access && value.refresh && value.user ? value : null;
  } catch {
    return null;
  }
}

function save(value) {
  session = value;
  if (value) localStorage.setItem(STORAGE_KEY, JSON.stringify(value));
  else localStorage.removeItem(STORAGE_KEY);
  for (const listener of listeners) listener(value);
}

/** Call `listener(session or null)` whenever the session changes (sign in, out, end). */
export function onSessionChange(listener) {
  listeners.add(listener);
}

export function currentSession() {
  return session;
}

function userOf(accessToken) {
  // Only for showing the name: the server checks the token, never this.
  const payload = accessToken.split('.')[1] || '';
  const binary = atob(payload.replace(/-/g, '+').replace(/_/g, '/'));
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes)).sub;
}

function fromTokenResponse(body) {
  return {
    user: userOf(body.access_token),
    access: body.access_token,
    refresh: body.refresh_token,
    expiresAt: Date.now() + body.expires_in * 1000,
    lifetime: body.expires_in * 1000,
  };
}

/** Whether a session's access token should be refreshed before use. */
function expiring(value) {
  const early = Math.min(EARLY_MS, (value.lifetime || 0) / 3);
  return value.expiresAt - Date.now() < early;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (typeof body.error_description === 'string') return body.error_description;
    if (typeof body.detail === 'string') return body.detail;
    if (Array.isArray(body.detail) && body.detail.length) {
      const first = body.detail[0];
      return typeof first.msg === 'string' ? first.msg.replace(/^Value error, /, '') : 'invalid input';
    }
  } catch {
    // not JSON: fall through
  }
  return `${response.status} ${response.statusText}`.trim();
}

async function postToken(form) {
  const response = await fetch('/token', { method: 'POST', body: new URLSearchParams(form) });
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return fromTokenResponse(await response.json());
}

export async function signIn(username, password) {
  save(await postToken({ grant_type: 'password', username, password }));
  return session;
}

export async function signUp(name, password) {
  const response = await fetch('/register', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name, password }),
  });
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return signIn(name, password);
}

export async function signOut() {
  const old = session;
  save(null);
  if (old) {
    try {
      await fetch('/logout', {
        method: 'POST',
        body: new URLSearchParams({ refresh_token: old.refresh }),
      });
    } catch {
      // offline: the tokens are dropped here anyway and expire on their own
    }
  }
}

async function refreshNow() {
  const before = session;
  if (!before) throw new SessionEnded('signed out');
  const stored = load();
  if (stored && stored.refresh !== before.refresh) {
    // Another tab refreshed meanwhile: take its tokens over.
    save(stored);
    if (!expiring(stored)) return stored;
  }
  let next;
  try {
    next = await postToken({ grant_type: 'refresh_token', refresh_token: session.refresh });
  } catch (error) {
    if (error instanceof ApiError && (error.status === 400 || error.status === 401)) {
      save(null);
      throw new SessionEnded(error.message);
    }
    throw error; // a network or server error: worth trying again later
  }
  save(next);
  return next;
}

/** Spend the refresh token for a new pair; one refresh at a time, in every tab. */
export function refresh() {
  if (!refreshing) {
    const run = () => refreshNow();
    const locked = navigator.locks ? navigator.locks.request(LOCK, run) : run();
    refreshing = locked.finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

/** A valid access token: the current one, or a fresh one when it is (nearly) expired. */
export async function accessToken() {
  if (!session) throw new SessionEnded('signed out');
  if (expiring(session)) await refresh();
  return session.access;
}

/**
 * Call the HTTP API with the access token; JSON in (`json`), JSON out (null for
 * 204). A 401 refreshes the token and tries once more. Errors throw ApiError
 * with the server's message, or TypeError when the server cannot be reached.
 */
export async function api(path, { method = 'GET', json } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Authorization: `Bearer ${await accessToken()}` };
    const init = { method, headers };
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    }
    const response = await fetch(path, init);
    if (response.status === 401 && attempt === 0) {
      await refresh();
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response.status === 204 ? null : response.json();
  }
}

/** A short, human description of an error from `api` or `fetch`. */
export function describeError(error) {
  if (error instanceof ApiError) return error.message;
  if (error instanceof SessionEnded) return 'signed out';
  if (error instanceof TypeError) return 'the server cannot be reached';
  return String(error && error.message ? error.message : error);
}
