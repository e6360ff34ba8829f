// rescind web console: plain JavaScript, no build step.
//
// Every piece of journal data (order ids, reasons, upstream messages) is
// attacker-controlled: it is only ever inserted as text (textContent, text
// nodes), never as HTML. The API token is kept in this tab's sessionStorage
// and sent as `Authorization: Bearer …` on every fetch.
'use strict';
(function () {
  const TOKEN_KEY = 'rescind.token';
  const PAGE_SIZE = 20;
  const STATES = ['running', 'stuck', 'completed', 'failed', 'aborted'];

  // ------------------------------------------------------------ DOM helpers

  // el('td', {class: 'x', text: 'y'}, child, 'text', ...): strings become
  // text nodes; attributes are set one by one (no HTML parsing anywhere).
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === undefined || kid === null || kid === false) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }

  function main() {
    return document.getElementById('main');
  }

  // Replace the page's content; null/false entries (optional parts) are skipped.
  function show(...nodes) {
    main().replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
  }

  function time(ms) {
    if (!ms) return '';
    const d = new Date(ms);
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }

  function badge(state) {
    return el('span', { class: 'badge s-' + String(state).replace(/[^a-z_]/g, ''), text: state });
  }

  function sagaLink(s) {
    return el('a', { href: '#/saga/' + encodeURIComponent(s.id), class: 'order', text: s.order });
  }

  function alertBox(msg) {
    return el('p', { class: 'error', role: 'alert', text: msg });
  }

  // ------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const token = sessionStorage.getItem(TOKEN_KEY) || '';
    const headers = { Authorization: 'Bearer ' + token };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    const text = await r.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = text;
    }
    const words = data && typeof data === 'object' && typeof data.error === 'string'
      ? data.error
      : (typeof data === 'string' && data ? data : 'HTTP ' + r.status);
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      renderLogin('The worker refused the token: ' + words);
      throw new ApiError(401, words);
    }
    if (!r.ok) throw new ApiError(r.status, words);
    return data;
  }

  function errorText(e) {
    if (e instanceof ApiError) return 'The API answered ' + e.status + ': ' + e.message;
    return 'Request failed: ' + (e && e.message ? e.message : String(e));
  }

  // ------------------------------------------------------------ sign in

  function renderLogin(problem) {
    document.getElementById('nav').hidden = true;
    document.getElementById('signout').hidden = true;
    const input = el('input', {
      id: 'token', type: 'password', autocomplete: 'off', required: true,
      placeholder: 'API token', size: 40,
    });
    const form = el('form', { id: 'login', class: 'card' },
      el('h1', { text: 'Sign in' }),
      el('p', { text: 'Paste an API token (a name:scope:token entry of worker.api_tokens_env; the token part only). It is kept in this tab only.' }),
      problem ? alertBox(problem) : null,
      el('label', { for: 'token', text: 'Token ' }), input, ' ',
      el('button', { type: 'submit', id: 'login-submit', text: 'Sign in' }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      if (location.hash === '' || location.hash === '#/login') location.hash = '#/overview';
      else route();
    });
    show(form);
    input.focus();
  }

  // ------------------------------------------------------------ overview

  async function renderOverview() {
    const o = await api('GET', '/ui/api/overview');
    const cards = el('div', { class: 'cards' },
      el('a', { class: 'card count', href: '#/sagas' },
        el('span', { class: 'n', text: o.total }), el('span', { text: 'sagas' })),
      STATES.map((s) => el('a', { class: 'card count', href: '#/sagas?state=' + s, 'data-state': s },
        el('span', { class: 'n', text: (o.by_state && o.by_state[s]) || 0 }), badge(s))));
    const channels = Object.keys(o.by_channel || {}).sort();
    const byChannel = el('table', { id: 'by-channel' },
      el('thead', {}, el('tr', {}, el('th', { text: 'channel' }), STATES.map((s) => el('th', { text: s })))),
      el('tbody', {}, channels.map((c) => el('tr', {},
        el('td', {}, el('a', { href: '#/sagas?channel=' + encodeURIComponent(c), text: c })),
        STATES.map((s) => el('td', { class: 'num', text: o.by_channel[c][s] || 0 }))))));
    const codes = el('table', { id: 'by-code' },
      el('thead', {}, el('tr', {}, el('th', { text: 'error code' }), el('th', { text: 'sagas' }), el('th', { text: 'latest' }))),
      el('tbody', {}, (o.failures_by_code || []).map((c) => el('tr', {},
        el('td', {}, el('code', { text: c.code })), el('td', { class: 'num', text: c.count }),
        el('td', { text: time(c.last_at_ms) })))));
    const recent = sagaTable(o.recent_failures || [], { code: true });
    recent.id = 'recent-failures';
    const engine = o.engine || {};
    show(
      el('h1', { text: 'Overview' }),
      cards,
      o.unreadable ? alertBox(o.unreadable + ' saga(s) could not be read: see GET /sagas') : null,
      el('section', {}, el('h2', { text: 'By channel' }), channels.length ? byChannel : el('p', { text: 'No sagas yet.' })),
      el('section', {}, el('h2', { text: 'Failed and stuck sagas by error code' }),
        (o.failures_by_code || []).length ? codes : el('p', { text: 'None.' })),
      el('section', {}, el('h2', { text: 'Recent failures' }),
        (o.recent_failures || []).length ? recent : el('p', { text: 'None.' })),
      el('p', { class: 'muted', text: 'This worker: ' + Object.entries(engine)
        .filter(([, v]) => typeof v === 'number').map(([k, v]) => k + ' ' + v).join(', ') }));
  }

  function sagaTable(rows, opts) {
    return el('table', { class: 'sagas' },
      el('thead', {}, el('tr', {},
        ['order', 'kind', 'account', 'state', opts && opts.code ? 'code' : null, 'reason', 'updated']
          .filter(Boolean).map((h) => el('th', { text: h })),
        opts && opts.actions ? el('th', { text: 'actions' }) : null)),
      el('tbody', {}, rows.map((s) => {
        const tr = el('tr', { 'data-saga': s.id },
          el('td', {}, sagaLink(s)),
          el('td', { text: s.kind === s.plan ? s.kind : s.kind + ' → ' + s.plan }),
          el('td', { text: s.account || '' }),
          el('td', {}, badge(s.state)),
          opts && opts.code ? el('td', {}, el('code', { text: s.code })) : null,
          el('td', { class: 'reason', title: s.reason || '', text: s.reason || '' }),
          el('td', { class: 'time', text: time(s.updated_at_ms) }));
        if (opts && opts.actions) tr.append(el('td', { class: 'actions' }, opts.actions(s, tr)));
        return tr;
      })));
  }

  // ------------------------------------------------------------ saga list

  // The list contract: GET /sagas?order=CHANNEL:ORDER_ID&state=&channel=&kind=
  // &account=&cursor=&limit= → {sagas, next_cursor}. A worker whose list
  // answers without `next_cursor` knows only set= and limit=: then the page
  // reads the whole list once and filters and pages it here.
  let legacyList = false;

  function orderFilter(f) {
    const o = (f.order || '').trim();
    if (!o) return '';
    if (o.includes(':')) return o;
    return f.channel ? f.channel + ':' + o : '';
  }

  function matches(s, f) {
    const o = (f.order || '').trim();
    if (o) {
      const want = orderFilter(f);
      if (want ? s.order !== want : !s.order.endsWith(':' + o)) return false;
    }
    if (f.state && s.state !== f.state) return false;
    if (f.channel && s.channel !== f.channel) return false;
    if (f.kind && s.kind !== f.kind && s.plan !== f.kind) return false;
    if (f.account && (s.account || '') !== f.account) return false;
    return true;
  }

  async function listSagas(f, cursor, limit) {
    if (!legacyList) {
      const q = new URLSearchParams();
      const order = orderFilter(f);
      if (order) q.set('order', order);
      for (const k of ['state', 'channel', 'kind', 'account']) if (f[k]) q.set(k, f[k]);
      if (cursor) q.set('cursor', cursor);
      q.set('limit', String(limit));
      const data = await api('GET', '/sagas?' + q.toString());
      if (data && Object.prototype.hasOwnProperty.call(data, 'next_cursor')) {
        return { sagas: data.sagas || [], next: data.next_cursor };
      }
      legacyList = true;
    }
    const set = f.state === 'running' || f.state === 'stuck' ? 'unfinished'
      : (['completed', 'failed', 'aborted'].includes(f.state) ? 'finished' : 'all');
    const data = await api('GET', '/sagas?set=' + set);
    const all = (data.sagas || []).filter((s) => matches(s, f))
      .sort((a, b) => b.updated_at_ms - a.updated_at_ms);
    const from = Number(cursor) > 0 ? Number(cursor) : 0;
    const to = from + limit;
    return { sagas: all.slice(from, to), next: to < all.length ? String(to) : null };
  }

  function filtersOf(params) {
    const f = {};
    for (const k of ['order', 'state', 'channel', 'kind', 'account']) f[k] = params.get(k) || '';
    return f;
  }

  function hashWith(view, f, cursor) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
    if (cursor) q.set('cursor', cursor);
    const s = q.toString();
    return '#/' + view + (s ? '?' + s : '');
  }

  // Previous pages' cursors, per filter, for "Previous".
  const cursorTrail = [];

  async function renderSagas(params) {
    const f = filtersOf(params);
    const cursor = params.get('cursor') || '';
    const field = (name, label, input) => el('label', { for: 'f-' + name }, label, ' ', input);
    const text = (name, placeholder) => el('input', {
      id: 'f-' + name, name, value: f[name], placeholder, autocomplete: 'off',
    });
    const stateSel = el('select', { id: 'f-state', name: 'state' },
      el('option', { value: '', text: 'any' }),
      STATES.map((s) => el('option', { value: s, text: s, selected: f.state === s })));
    const form = el('form', { id: 'filters', class: 'filters' },
      field('order', 'Order', text('order', 'CHANNEL:ORDER_ID or ORDER_ID')),
      field('state', 'State', stateSel),
      field('channel', 'Channel', text('channel', 'tmall-tbc')),
      field('kind', 'Kind', text('kind', 'cancel_unpaid')),
      field('account', 'Account', text('account', '')),
      el('button', { type: 'submit', id: 'search', text: 'Search' }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const nf = {};
      for (const k of Object.keys(f)) nf[k] = form.elements[k].value.trim();
      cursorTrail.length = 0;
      location.hash = hashWith('sagas', nf, '');
    });
    const hint = f.order && !f.order.includes(':') && !f.channel && !legacyList
      ? el('p', { class: 'muted', text: 'Searching by order id needs its channel: type CHANNEL:ORDER_ID or fill in Channel.' })
      : null;
    show(el('h1', { text: 'Sagas' }), form, hint, el('p', { class: 'muted', text: 'Loading…' }));
    const page = await listSagas(f, cursor, PAGE_SIZE);
    const nav = el('div', { class: 'pager' },
      el('button', {
        type: 'button', id: 'prev', disabled: !cursor, text: '← Previous',
        onclick: () => { location.hash = hashWith('sagas', f, cursorTrail.pop() || ''); },
      }),
      el('span', { class: 'muted', text: page.sagas.length + ' shown' }),
      el('button', {
        type: 'button', id: 'next', disabled: !page.next, text: 'Next →',
        onclick: () => { cursorTrail.push(cursor); location.hash = hashWith('sagas', f, page.next); },
      }));
    show(el('h1', { text: 'Sagas' }), form, hint,
      page.sagas.length ? sagaTable(page.sagas) : el('p', { id: 'no-sagas', text: 'No saga matches.' }),
      nav);
  }

  // ------------------------------------------------------------ saga page

  function short(v) {
    if (v === undefined || v === null) return '';
    return typeof v === 'string' ? v : JSON.stringify(v);
  }

  function orderText(o) {
    if (!o) return '';
    if (typeof o === 'string') return o;
    return (o.channel || '?') + ':' + (o.order_id || o.id || '?');
  }

  // One timeline record as (step, attempts, via, upstream code, words).
  function describe(rec, d) {
    const out = { step: '', attempts: '', via: '', code: '', words: '' };
    switch (rec) {
      case 'started': {
        const i = d.input || {};
        out.words = 'started ' + short(i.kind) + ' for ' + orderText(i.order)
          + (i.account ? ' as account ' + i.account : '')
          + (i.stock_lock ? ', stock lock ' + orderText({ channel: i.stock_lock.channel, order_id: i.stock_lock.lock_id }) : '')
          + (i.reason ? ', reason "' + i.reason + '"' : '')
          + (d.by ? ', by ' + d.by : '');
        break;
      }
      case 'intent': {
        const a = d.action || {};
        out.step = d.step;
        const rest = Object.assign({}, a);
        delete rest.action;
        out.words = 'about to call ' + short(a.action) + ' ' + short(rest);
        break;
      }
      case 'outcome': {
        const o = d.outcome || {};
        out.step = d.step;
        out.attempts = d.attempts || '';
        out.via = d.via || '';
        if (o.outcome === 'failed' && o.error) {
          out.code = [o.error.code, o.error.sub_code].filter(Boolean).join('/');
          out.words = 'failed: ' + short(o.error.message);
        } else if (o.outcome === 'conflict') {
          out.words = 'conflict ' + short(o.conflict) + ': ' + short(o.message);
        } else {
          const rest = Object.assign({}, o);
          delete rest.outcome;
          out.words = short(o.outcome) + (Object.keys(rest).length ? ' ' + short(rest) : '');
        }
        if (d.via === 'lookup') out.words += ' (the step was in doubt; a status lookup settled it)';
        if (d.via === 'operator') out.words += ' (settled by an operator)';
        break;
      }
      case 'resolved':
        out.step = d.step;
        out.via = 'operator';
        out.words = 'in-doubt step resolved by ' + short(d.operator) + ': '
          + (d.outcome ? 'applied upstream, ' + short(d.outcome) : 'not applied, to be re-issued')
          + ' — ' + short(d.reason);
        break;
      case 'observed': {
        const ob = d.observation || {};
        out.via = d.via || '';
        out.words = 'observed ' + short(ob.observed) + ' ' + short(ob.status)
          + (ob.refund_id ? ' (refund ' + ob.refund_id + ')' : '');
        break;
      }
      case 'switched':
        out.words = 'switched to ' + short(d.to) + ': ' + short(d.reason);
        break;
      case 'abort_requested':
        out.words = 'abort requested' + (d.by ? ' by ' + d.by : '') + ': ' + short(d.reason);
        break;
      case 'resumed':
        out.words = 'resumed by ' + short(d.by);
        break;
      case 'stuck':
        out.words = 'stuck: ' + short(d.reason);
        out.code = codeIn(d.reason);
        break;
      case 'finished': {
        const o = d.outcome || {};
        out.words = 'finished: ' + short(o.result)
          + (o.order ? ', order ' + short(o.order) : '')
          + (o.reason ? ': ' + o.reason : '') + (o.note ? ' (' + o.note + ')' : '');
        out.code = o.result === 'failed' ? codeIn(o.reason) : '';
        break;
      }
      default:
        out.words = short(d);
    }
    return out;
  }

  function codeIn(text) {
    const m = /; code ([^\s;,:)]+)(?:; sub_code ([^\s;,:)]+))?/.exec(String(text || ''));
    return m ? (m[2] ? m[1] + '/' + m[2] : m[1]) : '';
  }

  // The step in doubt: the last intent with no outcome (or applied
  // resolution) after it.
  function inDoubtStep(timeline) {
    const open = new Map();
    for (const l of timeline || []) {
      const d = l.detail || {};
      if (l.record === 'intent') open.set(d.step, true);
      else if (l.record === 'outcome') open.delete(d.step);
      else if (l.record === 'resolved' && d.outcome) open.delete(d.step);
    }
    const steps = [...open.keys()];
    return steps.length ? steps[steps.length - 1] : null;
  }

  async function renderSaga(id) {
    const v = await api('GET', '/sagas/' + encodeURIComponent(id));
    const s = v.summary;
    const dl = el('dl', { class: 'summary' });
    const row = (k, val) => dl.append(el('dt', { text: k }), el('dd', {}, val));
    row('order', el('span', { id: 'saga-order', text: s.order }));
    row('saga', el('code', { text: s.id }));
    row('kind', s.kind === s.plan ? s.kind : s.kind + ' (now ' + s.plan + ')');
    if (s.account) row('account', s.account);
    row('state', el('span', {}, badge(s.state), v.running ? ' (running on this worker)' : ''));
    row('order state', s.order_state);
    if (s.reason) row('reason', el('span', { id: 'saga-reason', text: s.reason }));
    row('steps', s.steps + ' (retries ' + s.retries + ', in-doubt steps settled by lookup ' + s.resolved_by_lookup + ')');
    row('started', time(s.started_at_ms));
    row('updated', time(s.updated_at_ms));
    const tl = el('table', { id: 'timeline' },
      el('thead', {}, el('tr', {}, ['#', 'time', 'record', 'step', 'attempts', 'via', 'upstream code', 'what']
        .map((h) => el('th', { text: h })))),
      el('tbody', {}, (v.timeline || []).map((l) => {
        const x = describe(l.record, l.detail || {});
        return el('tr', { class: 'r-' + String(l.record).replace(/[^a-z_]/g, '') },
          el('td', { class: 'num', text: l.seq }),
          el('td', { class: 'time', text: time(l.at_ms) }),
          el('td', {}, el('span', { class: 'record', text: l.record })),
          el('td', { class: 'num', text: x.step }),
          el('td', { class: 'num', text: x.attempts }),
          el('td', { text: x.via }),
          el('td', {}, x.code ? el('code', { text: x.code }) : ''),
          el('td', { class: 'what' }, x.words,
            el('details', {}, el('summary', { text: 'record' }),
              el('pre', { text: JSON.stringify(l.detail, null, 2) }))));
      })));
    const panel = el('div', { id: 'actions' });
    if (s.state === 'stuck' || s.state === 'running') {
      panel.append(actionButtons(s, panel, v.timeline, () => route()));
    }
    show(el('h1', {}, 'Saga ', el('span', { class: 'order', text: s.order })), dl, panel,
      el('h2', { text: 'Timeline' }), tl);
  }

  // ------------------------------------------------------------ actions

  // Buttons for a stuck saga; each opens a form in `host` that asks for what
  // the API needs (a reason for abort and resolve) before sending it.
  function actionButtons(s, host, timeline, done) {
    const open = (kind) => openAction(kind, s, host, timeline, done);
    return el('span', { class: 'buttons' },
      el('button', { type: 'button', class: 'act-resume', text: 'Resume', onclick: () => open('resume') }),
      el('button', { type: 'button', class: 'act-resolve', text: 'Resolve…', onclick: () => open('resolve') }),
      el('button', { type: 'button', class: 'act-abort danger', text: 'Abort…', onclick: () => open('abort') }));
  }

  async function openAction(kind, s, host, timeline, done) {
    host.querySelectorAll('form.action').forEach((f) => f.remove());
    const status = el('p', { class: 'status', role: 'status' });
    const reason = el('textarea', {
      name: 'reason', class: 'reason-input', rows: 2, cols: 60, required: kind !== 'resume',
      placeholder: kind === 'resolve' ? 'What you verified upstream (journaled)' : 'Why (journaled)',
    });
    const form = el('form', { class: 'action action-' + kind, 'data-saga': s.id });
    form.append(el('h3', {}, kind + ' ', el('span', { class: 'order', text: s.order })));
    let step = null;
    let applied = null;
    let refund = null;
    if (kind === 'resume') {
      form.append(el('p', { class: 'muted', text: 'Runs the saga again from where it stopped. The journal records your token\'s name as who resumed it.' }));
    } else if (kind === 'abort') {
      form.append(el('p', { class: 'muted', text: 'Stops the saga and compensates what can be taken back.' }),
        el('label', {}, 'Reason ', reason));
    } else {
      if (!timeline) {
        try {
          timeline = (await api('GET', '/sagas/' + encodeURIComponent(s.id))).timeline;
        } catch (e) {
          status.textContent = errorText(e);
        }
      }
      const guess = inDoubtStep(timeline);
      step = el('input', { name: 'step', type: 'number', min: 0, required: true, value: guess === null ? '' : guess, size: 4 });
      applied = el('select', { name: 'applied' },
        el('option', { value: 'true', text: 'took effect upstream (applied)' }),
        el('option', { value: 'false', text: 'did not take effect (re-issue it)' }));
      refund = el('input', { name: 'refund_id', placeholder: 'refund id (applied paid cancel)', autocomplete: 'off' });
      form.append(
        el('p', { class: 'muted', text: guess === null ? 'No step looks in doubt; the API will say if none is.' : 'Step ' + guess + ' is in doubt.' }),
        el('label', {}, 'Step ', step), ' ', el('label', {}, 'Verdict ', applied), ' ', refund,
        el('br'), el('label', {}, 'Reason ', reason));
    }
    const submit = el('button', { type: 'submit', class: 'confirm', text: 'Confirm ' + kind });
    form.append(' ', submit, ' ',
      el('button', { type: 'button', class: 'link', text: 'Cancel', onclick: () => form.remove() }), status);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      let body = {};
      if (kind !== 'resume') {
        const r = reason.value.trim();
        if (!r) {
          status.textContent = 'A reason is required.';
          status.className = 'status error';
          return;
        }
        body = { reason: r };
      }
      if (kind === 'resolve') {
        body.step = Number(step.value);
        body.applied = applied.value === 'true';
        if (refund.value.trim()) body.refund_id = refund.value.trim();
      }
      submit.disabled = true;
      status.className = 'status';
      status.textContent = 'Sending…';
      try {
        await api('POST', '/sagas/' + encodeURIComponent(s.id) + '/' + kind, body);
        status.className = 'status ok';
        status.textContent = kind + ' accepted for ' + s.order;
        setTimeout(done, 700);
      } catch (e) {
        status.className = 'status error';
        status.textContent = errorText(e);
        submit.disabled = false;
      }
    });
    host.append(form);
    const first = form.querySelector('textarea, input');
    if (first) first.focus();
  }

  // ------------------------------------------------------------ stuck queue

  async function renderStuck(params) {
    const cursor = params.get('cursor') || '';
    const page = await listSagas({ state: 'stuck' }, cursor, PAGE_SIZE);
    const host = el('div', { id: 'action-host' });
    const table = sagaTable(page.sagas, {
      actions: (s) => actionButtons(s, host, null, () => route()),
    });
    table.id = 'stuck';
    show(el('h1', { text: 'Stuck queue' }),
      el('p', { class: 'muted', text: 'Sagas that wait for an operator: fix the cause, then resume; resolve a step in doubt after checking upstream; or abort.' }),
      host,
      page.sagas.length ? table : el('p', { id: 'no-stuck', text: 'Nothing is stuck.' }),
      el('div', { class: 'pager' },
        el('button', { type: 'button', disabled: !cursor, text: '← First', onclick: () => { location.hash = '#/stuck'; } }),
        el('button', { type: 'button', disabled: !page.next, text: 'Next →', onclick: () => { location.hash = '#/stuck?cursor=' + encodeURIComponent(page.next); } })));
  }

  // ------------------------------------------------------------ routing

  async function route() {
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      renderLogin('');
      return;
    }
    document.getElementById('nav').hidden = false;
    document.getElementById('signout').hidden = false;
    const h = location.hash.replace(/^#\/?/, '');
    const [path, query] = h.split('?');
    const params = new URLSearchParams(query || '');
    const parts = (path || 'overview').split('/');
    const view = parts[0] || 'overview';
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('current', a.dataset.view === view);
    }
    document.body.dataset.view = view;
    document.body.dataset.loaded = '';
    try {
      if (view === 'sagas') await renderSagas(params);
      else if (view === 'stuck') await renderStuck(params);
      else if (view === 'saga' && parts[1]) await renderSaga(decodeURIComponent(parts[1]));
      else await renderOverview();
      document.body.dataset.loaded = view;
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) show(alertBox(errorText(e)));
      document.body.dataset.loaded = 'error';
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('signout').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      location.hash = '#/overview';
      renderLogin('');
    });
    window.addEventListener('hashchange', route);
    route();
  });
})();
