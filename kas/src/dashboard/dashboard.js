// kas dashboard: every agent with its status and views, and a live event feed.
//
// Data: GET /api/v1/agents (status), GET /api/v1/agents/{id}/views (views from kas's memory),
// GET /api/v1/agents/{id}/config and /gitops (configuration and GitOps status, read from Git by kas),
// and the Server-Sent Events of GET /api/v1/events. A `view` event re-reads that agent's views, a
// `config` or `gitops` event its configuration and GitOps status (both coalesced over 100 ms); an
// `agent` event re-reads the agent list; `object`, `config` and `gitops` events go to the feed. Strings
// from the API (config errors, object and project names come from Git) are only ever set as text
// (textContent, attributes), never parsed as HTML. Everything is
// updated in place (text of existing elements), never by reloading the page. No build step, no
// dependencies. When the API wants a token (api_listener.public_read is off), the page asks for one,
// keeps it in sessionStorage and reads the events with fetch() instead of EventSource (which cannot
// send an Authorization header).
'use strict';

(function () {
  const FEED_MAX = 200;
  const COALESCE_MS = 100;
  const AGENTS_REFRESH_MS = 5000;
  const RECONNECT_MS = 2000;
  const FEED_TYPES = ['view', 'object', 'agent', 'config', 'gitops'];

  const state = {
    token: sessionStorage.getItem('kas-token') || '',
    agents: new Map(), // id -> {card, fields, info, views, viewsAt, config, gitops, gitSeq}
    needToken: false,
    stats: { viewFetches: 0, gitFetches: 0, events: 0, streamOpens: 0 },
  };
  // For tests and the curious: counters, and whether the first load finished.
  window.kasDashboard = state.stats;

  const $ = (id) => document.getElementById(id);

  class AuthError extends Error {}

  function headers() {
    return state.token ? { Authorization: 'Bearer ' + state.token } : {};
  }

  // `missingOk`: a 404 (a feature kas has off) is `null`, not an error.
  async function getJSON(url, missingOk) {
    const r = await fetch(url, { headers: headers(), cache: 'no-store' });
    if (r.status === 401 || r.status === 403) throw new AuthError(url + ': ' + r.status);
    if (missingOk && r.status === 404) return null;
    if (!r.ok) throw new Error(url + ': ' + r.status);
    return r.json();
  }

  function askForToken() {
    if (state.needToken) return;
    state.needToken = true;
    $('login').hidden = false;
  }

  // ---- rendering helpers -------------------------------------------------------------------------

  function setText(el, text, flash) {
    if (!el) return;
    text = String(text);
    if (el.textContent === text) return;
    const first = el.dataset.rendered !== '1';
    el.textContent = text;
    el.dataset.rendered = '1';
    if (flash && !first) {
      el.classList.remove('flash');
      void el.offsetWidth; // restart the animation
      el.classList.add('flash');
    }
  }

  function num(v) {
    return typeof v === 'number' && isFinite(v) ? v : 0;
  }

  function fmtNum(v) {
    return Number.isInteger(v) ? String(v) : v.toFixed(2);
  }

  function ago(seconds) {
    if (seconds == null) return 'never';
    if (seconds < 1) return 'just now';
    if (seconds < 90) return Math.round(seconds) + ' s ago';
    if (seconds < 5400) return Math.round(seconds / 60) + ' min ago';
    return Math.round(seconds / 3600) + ' h ago';
  }

  function card(id) {
    let a = state.agents.get(id);
    if (a) return a;
    const node = $('agent-card').content.firstElementChild.cloneNode(true);
    node.id = 'agent-' + id;
    node.dataset.agent = String(id);
    const fields = {};
    node.querySelectorAll('[data-field]').forEach((el) => { fields[el.dataset.field] = el; });
    a = { card: node, fields, info: null, views: null, viewsAt: 0, config: undefined, gitops: undefined, gitSeq: 0 };
    state.agents.set(id, a);
    // Keep the cards in id order.
    const container = $('agents');
    const later = [...container.children].find((c) => Number(c.dataset.agent) > id);
    container.insertBefore(node, later || null);
    const empty = container.querySelector('.empty');
    if (empty) empty.remove();
    return a;
  }

  function renderStatus(a) {
    const info = a.info || {};
    const v = a.views || {};
    const connected = !!info.connected;
    const status = a.fields.status;
    setText(status, connected ? 'connected' : 'disconnected');
    status.className = 'status ' + (connected ? 'connected' : 'disconnected');
    setText(a.fields.name, info.name || 'agent ' + info.id);
    setText(a.fields.id, '#' + info.id);
    const parts = [];
    if (info.version) parts.push('agentk ' + info.version);
    if (info.pod) parts.push(info.pod);
    if (!a.views || !a.views.views || Object.keys(a.views.views).length === 0) {
      parts.push('no views yet');
    } else {
      const age = v.age_seconds == null ? null : v.age_seconds + (Date.now() - a.viewsAt) / 1000;
      parts.push((v.connected ? 'views live' : 'views stale') + ' · last change ' + ago(age));
    }
    setText(a.fields.meta, parts.join(' · '));
    a.card.classList.toggle('stale', !!a.views && !v.connected && Object.keys(v.views || {}).length > 0);
  }

  function rows(views, name) {
    const view = views && views[name];
    return view && Array.isArray(view.rows) ? view.rows : [];
  }

  function renderViews(a) {
    const views = (a.views && a.views.views) || {};
    const f = a.fields;
    // Nodes: one row without group-by.
    const n = rows(views, 'nodes')[0] || {};
    setText(f['nodes-count'], fmtNum(num(n.count)), true);
    setText(f['nodes-ready'], fmtNum(num(n.ready)), true);
    setText(f['nodes-not-ready'], fmtNum(num(n.not_ready)), true);
    // Pods: by (namespace, phase).
    const phases = new Map();
    let total = 0;
    const podRows = rows(views, 'pods_by_phase');
    for (const r of podRows) {
      const phase = r.phase || '(none)';
      phases.set(phase, (phases.get(phase) || 0) + num(r.count));
      total += num(r.count);
    }
    setText(f['pods-total'], fmtNum(total), true);
    const order = ['Running', 'Pending', 'Succeeded', 'Failed', 'Unknown'];
    const names = [...phases.keys()].sort((x, y) => {
      const ix = order.indexOf(x), iy = order.indexOf(y);
      return (ix < 0 ? 99 : ix) - (iy < 0 ? 99 : iy) || x.localeCompare(y);
    });
    const box = f['pods-phases'];
    const have = [...box.children].map((c) => c.dataset.phase);
    if (have.join('\n') !== names.join('\n')) {
      box.replaceChildren(...names.map((p) => {
        const s = document.createElement('span');
        s.dataset.phase = p;
        s.dataset.field = 'pods-phase-' + p;
        s.className = 'phase-' + p;
        return s;
      }));
    }
    for (const s of box.children) setText(s, s.dataset.phase + ' ' + fmtNum(phases.get(s.dataset.phase)), true);
    // Pods by namespace table.
    const tbody = f['pods-table'];
    const trs = podRows.map((r) => {
      const tr = document.createElement('tr');
      for (const text of [r.namespace, r.phase, fmtNum(num(r.count))]) {
        const td = document.createElement('td');
        td.textContent = text == null ? '' : String(text);
        tr.appendChild(td);
      }
      return tr;
    });
    tbody.replaceChildren(...trs);
    // Deployments: sums over namespaces.
    let desired = 0, available = 0, count = 0;
    for (const r of rows(views, 'deployments')) {
      desired += num(r.desired);
      available += num(r.available);
      count += num(r.count);
    }
    setText(f['deployments-available'], fmtNum(available), true);
    setText(f['deployments-desired'], fmtNum(desired), true);
    setText(f['deployments-count'], fmtNum(count), true);
  }

  // ---- configuration and GitOps -------------------------------------------------------------------

  function short(commit) {
    return typeof commit === 'string' && commit ? commit.slice(0, 8) : '–';
  }

  function clock(iso) {
    const d = iso ? new Date(iso) : null;
    return d && !isNaN(d) ? d.toLocaleTimeString([], { hour12: false }) : '';
  }

  // A status from the API as a class name: only [a-z_] survives.
  function cls(s) {
    return String(s == null ? '' : s).toLowerCase().replace(/[^a-z_]/g, '');
  }

  function setPill(el, status) {
    setText(el, status, true);
    el.className = 'pill ' + cls(status);
  }

  function el(tag, className, field) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (field) e.dataset.field = field;
    return e;
  }

  function setError(el, text) {
    setText(el, text || '');
    el.hidden = !text;
  }

  // `line 3, column 5: message (commit 1b2c3d4e)` (the file is the element's title), or a fetch
  // failure with whose fault it is.
  function describeConfigError(e) {
    if (e.kind === 'fetch') {
      return 'fetch failed' + (e.fault ? ' (' + e.fault + ')' : '') + ': ' + (e.message || e.code || '');
    }
    const where = e.line != null ? 'line ' + e.line + (e.column != null ? ', column ' + e.column : '') : e.file || 'config';
    return where + ': ' + (e.message || e.kind || 'error') + (e.commit ? ' (commit ' + short(e.commit) + ')' : '');
  }

  function renderConfig(a) {
    const c = a.config;
    const f = a.fields;
    if (c === undefined) return;
    if (c === null) {
      setText(f['config-commit'], '–');
      setPill(f['config-status'], 'off');
      setText(f['config-meta'], 'agent configuration is not enabled in kas');
      setError(f['config-error'], '');
      return;
    }
    setText(f['config-commit'], short(c.commit), true);
    f['config-commit'].title = c.commit || '';
    setPill(f['config-status'], c.status || 'unknown');
    const meta = [];
    if (c.applied_commit && c.applied_commit !== c.commit) meta.push('in force ' + short(c.applied_commit));
    if (c.applied_at) meta.push('applied ' + clock(c.applied_at));
    const d = c.delivery;
    if (d) meta.push(d.up_to_date ? 'delivered' : 'agent has ' + short(d.commit));
    else if (c.status === 'ok' || c.status === 'error') meta.push('not delivered (no config stream)');
    if (c.repository) meta.push(c.repository);
    setText(f['config-meta'], meta.join(' · '));
    const errors = Array.isArray(c.errors) ? c.errors : [];
    const error = errors.length === 0 ? '' :
      describeConfigError(errors[0]) + (errors.length > 1 ? ' (+' + (errors.length - 1) + ' more)' : '');
    setError(f['config-error'], error);
    f['config-error'].title = errors.length && errors[0].file ? errors[0].file + '\n' + error : error;
  }

  const COUNTS = [
    ['applied', ['applied', 'would_apply']],
    ['unchanged', ['unchanged']],
    ['failed', ['apply_failed', 'skipped', 'prune_failed']],
    ['pruned', ['pruned', 'gone', 'would_prune']],
  ];

  function projectItem(name) {
    const li = el('li');
    li.dataset.project = name;
    const head = el('div', 'line');
    head.append(el('span', 'name', 'gitops-project'), el('span', 'pill', 'gitops-phase'));
    const commits = el('div', 'sub');
    commits.append('desired ', el('code', '', 'gitops-desired'), ' · synced ', el('code', '', 'gitops-synced'));
    const counts = el('div', 'sub counts');
    for (const [what] of COUNTS) {
      const s = el('span', what);
      s.append(el('span', '', 'gitops-' + what), ' ' + what);
      counts.append(s);
    }
    li.append(head, commits, counts, el('div', 'err', 'gitops-error'));
    return li;
  }

  // The error that matters most: kas's (a rejected commit, a failed fetch), then the agent's last
  // failed round, then the first failed object.
  function projectError(p, sync, failed) {
    const e = p.error;
    if (e) {
      const first = Array.isArray(e.errors) ? e.errors[0] : null;
      const detail = first
        ? (first.path || '') + (first.line != null ? ' line ' + first.line : '') + ': ' + (first.message || '')
        : e.message || '';
      return (e.kind === 'rejected' ? 'commit ' + short(e.commit) + ' rejected: ' : 'fetch failed: ') + detail;
    }
    if (sync && sync.last_error && sync.phase !== 'synced') return 'last error: ' + (sync.last_error.message || '');
    if (failed) {
      const o = failed.object || {};
      return o.kind + ' ' + (o.namespace ? o.namespace + '/' : '') + o.name + ': ' + (failed.message || failed.result);
    }
    return '';
  }

  function renderProject(li, p) {
    const q = (n) => li.querySelector('[data-field="' + n + '"]');
    const sync = p.sync || null;
    setText(q('gitops-project'), p.project);
    const phase = q('gitops-phase');
    setText(phase, sync ? sync.phase + (sync.dry_run ? ' (dry run)' : '') : p.status || 'pending', true);
    phase.className = 'pill ' + cls(sync ? sync.phase : p.status);
    setText(q('gitops-desired'), short(p.desired_commit), true);
    setText(q('gitops-synced'), short(sync && sync.synced_commit), true);
    const objects = sync && Array.isArray(sync.objects) ? sync.objects : [];
    for (const [what, results] of COUNTS) {
      const n = objects.filter((o) => results.includes(o.result)).length;
      setText(q('gitops-' + what), String(n), true);
      if (what === 'failed') q('gitops-failed').parentElement.classList.toggle('bad', n > 0);
    }
    const failed = objects.find((o) => COUNTS[2][1].includes(o.result));
    const error = projectError(p, sync, failed);
    setError(q('gitops-error'), error);
    q('gitops-error').title = error;
  }

  function renderGitops(a) {
    const g = a.gitops;
    if (g === undefined) return;
    const list = a.fields['gitops-projects'];
    const projects = g && Array.isArray(g.projects) ? g.projects : [];
    setError(a.fields['gitops-empty'], g === null ? 'GitOps is not enabled in kas' : projects.length ? '' : 'no manifest projects');
    const have = new Map([...list.children].map((li) => [li.dataset.project, li]));
    const items = projects.map((p) => {
      const li = have.get(String(p.project)) || projectItem(String(p.project));
      renderProject(li, p);
      return li;
    });
    if (items.length !== list.children.length || items.some((li, i) => list.children[i] !== li)) {
      list.replaceChildren(...items);
    }
  }

  function renderSummary() {
    let connected = 0;
    for (const a of state.agents.values()) if (a.info && a.info.connected) connected++;
    setText($('summary'), connected + ' of ' + state.agents.size + ' agents connected');
  }

  // ---- loading ------------------------------------------------------------------------------------

  async function loadViews(id) {
    const a = card(id);
    try {
      const v = await getJSON('/api/v1/agents/' + id + '/views');
      state.stats.viewFetches++;
      a.views = v;
      a.viewsAt = Date.now();
      renderViews(a);
      renderStatus(a);
    } catch (e) {
      if (e instanceof AuthError) askForToken();
      else console.warn('views of agent', id, e);
    }
  }

  async function loadGit(id) {
    const a = state.agents.get(id);
    if (!a) return;
    const seq = ++a.gitSeq;
    try {
      const [config, gitops] = await Promise.all([
        getJSON('/api/v1/agents/' + id + '/config', true),
        getJSON('/api/v1/agents/' + id + '/gitops', true),
      ]);
      state.stats.gitFetches++;
      if (seq !== a.gitSeq) return; // a later read is under way or done
      a.config = config;
      a.gitops = gitops;
      renderConfig(a);
      renderGitops(a);
    } catch (e) {
      if (e instanceof AuthError) askForToken();
      else console.warn('configuration of agent', id, e);
    }
  }

  async function loadAgents(withViews) {
    let list;
    try {
      list = await getJSON('/api/v1/agents');
    } catch (e) {
      if (e instanceof AuthError) askForToken();
      setText($('summary'), 'kas did not answer: ' + e.message);
      return;
    }
    const seen = new Set();
    for (const info of list) {
      const a = card(info.id);
      a.info = info;
      seen.add(info.id);
      renderStatus(a);
    }
    for (const [id, a] of state.agents) {
      if (!seen.has(id)) { a.card.remove(); state.agents.delete(id); }
    }
    if (state.agents.size === 0 && !$('agents').querySelector('.empty')) {
      const p = document.createElement('p');
      p.className = 'empty';
      p.textContent = 'No agents yet.';
      $('agents').appendChild(p);
    }
    renderSummary();
    if (withViews) await Promise.all([...seen].flatMap((id) => [loadViews(id), loadGit(id)]));
  }

  // `load(id)` once per agent for every burst of calls within COALESCE_MS.
  function coalesced(load) {
    const pending = new Set();
    let timer = null;
    return (id) => {
      pending.add(id);
      if (timer) return;
      timer = setTimeout(() => {
        timer = null;
        const ids = [...pending];
        pending.clear();
        ids.forEach(load);
      }, COALESCE_MS);
    };
  }
  const scheduleViews = coalesced(loadViews);
  const scheduleGit = coalesced(loadGit);

  // ---- the event feed -----------------------------------------------------------------------------

  function feedFilter(li) {
    const type = li.dataset.type;
    if (type === 'object' && li.dataset.kind === 'Event') return $('show-object').checked && $('show-view').checked;
    return $('show-' + (type === 'config' || type === 'gitops' ? 'git' : type)).checked;
  }

  function span(cls, text) {
    const s = document.createElement('span');
    s.className = cls;
    s.textContent = text;
    return s;
  }

  function describeRow(change) {
    const key = Object.values(change.key || {}).join('/');
    if (change.values == null) return (key || 'row') + ' removed';
    const vals = Object.entries(change.values).map(([k, v]) => k + ' ' + fmtNum(num(v))).join(', ');
    return (key ? key + ': ' : '') + vals;
  }

  function addFeed(type, data) {
    const li = document.createElement('li');
    li.dataset.type = type;
    li.dataset.agent = String(data.agent_id);
    li.appendChild(span('t', new Date().toLocaleTimeString([], { hour12: false })));
    li.appendChild(span('a', '#' + data.agent_id));
    const what = span('what', '');
    if (type === 'object') {
      li.dataset.kind = data.kind;
      what.appendChild(span('badge ' + data.type, data.type));
      what.appendChild(document.createTextNode(
        data.kind + ' ' + (data.namespace ? data.namespace + '/' : '') + data.name));
    } else if (type === 'view') {
      what.appendChild(span('badge', 'view'));
      what.appendChild(document.createTextNode(
        data.view + ' · ' + (data.changes || []).map(describeRow).join('; ')));
    } else if (type === 'config') {
      what.appendChild(span('badge ' + (data.status === 'delivered' ? 'Added' : 'bad'), 'config'));
      what.appendChild(document.createTextNode(
        data.status + (data.commit ? ' ' + short(data.commit) : '') + (data.message ? ': ' + data.message : '')));
    } else if (type === 'gitops') {
      const bad = data.type === 'rejected' || data.type === 'fetch_failed' || data.failed > 0;
      what.appendChild(span('badge' + (bad ? ' bad' : ''), 'gitops'));
      const parts = [data.project, data.type];
      if (data.phase) parts.push(data.phase);
      if (data.commit) parts.push(short(data.commit));
      if (data.objects != null) parts.push(data.objects + ' objects' + (data.failed != null ? ', ' + data.failed + ' failed' : ''));
      what.appendChild(document.createTextNode(parts.join(' · ') + (data.message ? ': ' + data.message : '')));
    } else {
      what.appendChild(span('badge ' + (data.connected ? 'Added' : 'Deleted'), 'agent'));
      what.appendChild(document.createTextNode(data.connected ? 'connected' : 'disconnected'));
    }
    li.appendChild(what);
    li.hidden = !feedFilter(li);
    const list = $('events');
    list.insertBefore(li, list.firstChild);
    while (list.children.length > FEED_MAX) list.lastChild.remove();
  }

  function onEvent(type, text) {
    let data;
    try { data = JSON.parse(text); } catch (e) { return; }
    state.stats.events++;
    if (type === 'view') scheduleViews(data.agent_id);
    if (type === 'agent') loadAgents(false).then(() => { scheduleViews(data.agent_id); scheduleGit(data.agent_id); });
    if (type === 'config' || type === 'gitops') scheduleGit(data.agent_id);
    if (FEED_TYPES.includes(type)) addFeed(type, data);
  }

  function setLive(s, text) {
    $('live').dataset.state = s;
    setText($('live-text'), text);
  }

  function opened() {
    state.stats.streamOpens++;
    setLive('live', 'live');
    // Catch up with whatever happened while the stream was down.
    loadAgents(true);
  }

  function subscribeWithEventSource() {
    const es = new EventSource('/api/v1/events');
    es.onopen = opened;
    es.onerror = () => setLive('connecting', 'reconnecting…');
    for (const type of FEED_TYPES) {
      es.addEventListener(type, (e) => onEvent(type, e.data));
    }
  }

  // EventSource cannot send headers: with a token, read the stream with fetch().
  async function subscribeWithFetch() {
    for (;;) {
      try {
        const r = await fetch('/api/v1/events', { headers: headers(), cache: 'no-store' });
        if (r.status === 401 || r.status === 403) { askForToken(); setLive('down', 'not authorised'); return; }
        if (!r.ok || !r.body) throw new Error('events: ' + r.status);
        opened();
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let type = 'message', data = '';
            for (const line of block.split('\n')) {
              if (line.startsWith('event: ')) type = line.slice(7);
              else if (line.startsWith('data: ')) data += line.slice(6);
            }
            if (data) onEvent(type, data);
          }
        }
      } catch (e) {
        console.warn(e);
      }
      setLive('connecting', 'reconnecting…');
      await new Promise((ok) => setTimeout(ok, RECONNECT_MS));
    }
  }

  function subscribe() {
    if (state.token) subscribeWithFetch();
    else subscribeWithEventSource();
  }

  // ---- start --------------------------------------------------------------------------------------

  function start() {
    for (const id of ['show-object', 'show-view', 'show-agent', 'show-git']) {
      $(id).addEventListener('change', () => {
        for (const li of $('events').children) li.hidden = !feedFilter(li);
      });
    }
    $('login').addEventListener('submit', (e) => {
      e.preventDefault();
      state.token = $('token').value.trim();
      sessionStorage.setItem('kas-token', state.token);
      location.reload(); // a fresh start with the token; the only reload the page ever does
    });
    loadAgents(true).then(() => { state.stats.ready = true; });
    subscribe();
    setInterval(() => loadAgents(false), AGENTS_REFRESH_MS);
    setInterval(() => { for (const a of state.agents.values()) renderStatus(a); }, 1000);
  }

  start();
})();
