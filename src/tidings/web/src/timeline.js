// The message timeline of the open room.
//
// Messages come from two places: pages read from the database over HTTP
// (GET /rooms/<id>/messages) and publications on the room's channel. The two
// overlap where they meet, so the timeline is a set keyed by the server's
// message id, kept in id order: a message seen twice is shown once, and one
// that arrives late (a page loaded after a live message) lands in its place.
//
// Keeping it complete:
// - opening the room loads the newest page; the room's subscription was made
//   before (or, if it is still subscribing, its `subscribed` event syncs again
//   afterwards), so whatever the page missed arrives live;
// - after a reconnect, the SDK recovers missed publications from the channel's
//   history when it can (`recovered`); when it cannot (the server restarted,
//   or was away too long), `sync` reads the database after the newest id held.

import { api, describeError } from './auth.js';
import { h, longTime, replaceChildren, shortTime, visibleText } from './dom.js';

const PAGE = 50;
const EARLIER_PAGE = 30;
const CATCH_UP_PAGE = 200;
// Past this many catch-up pages, start over from the newest page instead.
const CATCH_UP_MAX_PAGES = 5;

export function messageElement(message, me) {
  const mine = message.user === me;
  return h(
    'li',
    { class: mine ? 'message mine' : 'message', dataset: { id: String(message.id) } },
    h(
      'div',
      { class: 'meta' },
      h('span', { class: 'author', text: message.user }),
      h('time', { datetime: message.ts, title: longTime(message.ts), text: shortTime(message.ts) }),
    ),
    h('div', { class: 'text', dir: 'auto', text: visibleText(message.text) }),
  );
}

export class Timeline {
  constructor(room, me, els, onChange) {
    this.room = room; // {id, name, channel, ...}
    this.me = me;
    this.els = els; // {scroller, list, earlier, start, error}
    this.onChange = onChange; // called after messages were added
    this.ids = [];
    this.items = new Map();
    this.hasMore = false;
    this.loadedLatest = false;
    this.closed = false;
    this.syncing = false;
    this.again = false;
    replaceChildren(els.list);
    this.renderTop();
    this.showError(null);
  }

  get oldest() {
    return this.ids.length ? this.ids[0] : null;
  }

  get newest() {
    return this.ids.length ? this.ids[this.ids.length - 1] : null;
  }

  close() {
    this.closed = true;
  }

  /** Add messages (any order, duplicates welcome); returns how many were new. */
  add(messages, { keepPosition = false } = {}) {
    if (this.closed) return 0;
    const scroller = this.els.scroller;
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    const atBottom = fromBottom - scroller.clientHeight < 80;
    let added = 0;
    for (const message of messages) {
      if (!Number.isSafeInteger(message.id) || this.items.has(message.id)) continue;
      const index = this.insertionIndex(message.id);
      const el = messageElement(message, this.me);
      if (index === this.ids.length) this.els.list.append(el);
      else this.els.list.insertBefore(el, this.items.get(this.ids[index]));
      this.ids.splice(index, 0, message.id);
      this.items.set(message.id, el);
      added++;
    }
    if (added) {
      if (keepPosition) scroller.scrollTop = scroller.scrollHeight - fromBottom;
      else if (atBottom || !this.loadedLatest) scroller.scrollTop = scroller.scrollHeight;
      this.onChange(this);
    }
    return added;
  }

  insertionIndex(id) {
    let lo = 0;
    let hi = this.ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.ids[mid] < id) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  scrollToBottom() {
    this.els.scroller.scrollTop = this.els.scroller.scrollHeight;
  }

  /** A publication that is not a stored message (say, a broadcast from the server API). */
  announce(text) {
    if (this.closed) return;
    this.els.list.append(h('li', { class: 'announcement', dir: 'auto', text: visibleText(text) }));
    this.scrollToBottom();
  }

  renderTop() {
    const { earlier, start } = this.els;
    earlier.hidden = !(this.loadedLatest && this.hasMore);
    start.hidden = !(this.loadedLatest && !this.hasMore);
  }

  showError(text, retry) {
    const el = this.els.error;
    if (!text) {
      el.hidden = true;
      replaceChildren(el);
      return;
    }
    el.hidden = false;
    replaceChildren(
      el,
      h('span', { text }),
      retry ? h('button', { type: 'button', text: 'Retry', on: { click: retry } }) : null,
    );
  }

  messagesUrl(query) {
    return `/rooms/${encodeURIComponent(this.room.id)}/messages?${new URLSearchParams(query)}`;
  }

  /**
   * Bring the timeline up to date from the database: the newest page the first
   * time, then everything after the newest message held. Runs one at a time; a
   * request made while one runs makes it run once more (a subscription that
   * completed during the first load may have missed what came in between).
   */
  async sync() {
    if (this.syncing) {
      this.again = true;
      return;
    }
    this.syncing = true;
    try {
      do {
        this.again = false;
        if (!this.loadedLatest) await this.loadLatest();
        else await this.catchUp();
      } while (this.again && !this.closed);
      this.showError(null);
    } catch (error) {
      if (!this.closed) {
        this.showError(`Could not load messages: ${describeError(error)}`, () => this.sync());
      }
    } finally {
      this.syncing = false;
    }
  }

  async loadLatest() {
    const body = await api(this.messagesUrl({ limit: PAGE }));
    if (this.closed) return;
    this.hasMore = body.has_more;
    this.loadedLatest = true;
    this.add(body.messages);
    this.renderTop();
    this.scrollToBottom();
  }

  async catchUp() {
    for (let page = 0; page < CATCH_UP_MAX_PAGES; page++) {
      const body = await api(this.messagesUrl({ after: this.newest ?? 0, limit: CATCH_UP_PAGE }));
      if (this.closed) return;
      this.add(body.messages);
      if (!body.has_more) return;
    }
    // Too far behind to fill in: show the newest page instead.
    this.ids = [];
    this.items.clear();
    replaceChildren(this.els.list);
    this.loadedLatest = false;
    await this.loadLatest();
  }

  /** "Load earlier": the page before the oldest message shown. */
  async loadEarlier() {
    if (this.oldest === null || this.closed) return;
    const button = this.els.earlier;
    button.disabled = true;
    try {
      const body = await api(this.messagesUrl({ before: this.oldest, limit: EARLIER_PAGE }));
      if (this.closed) return;
      this.hasMore = body.has_more;
      this.add(body.messages, { keepPosition: true });
      this.renderTop();
      this.showError(null);
    } catch (error) {
      this.showError(`Could not load earlier messages: ${describeError(error)}`, () =>
        this.loadEarlier(),
      );
    } finally {
      button.disabled = false;
    }
  }
}
