// The lokstream live viewer: one EventSource for every chosen channel, a feed of
// messages, a messages-per-second chart, the connection state and gap notices.
// Message fields are untrusted input, so they reach the page through textContent only.
'use strict';

(() => {
  const MAX_ROWS = 500;
  const CHART_SECONDS = 60;
  const RATE_SECONDS = 10;
  const SEEN_IDS_KEPT = 10000;
  const CLOSED_RETRY_MS = 5000;
  const SUGGESTIONS_REFRESH_MS = 5000;

  const state = {
    channels: [],
    source: null,
    lastEventId: '',
    opens: 0,
    gaps: 0,
    received: 0,
    duplicates: 0,
    seen: new Set(),
    seenOrder: [],
    perSecond: new Map(),
    retryTimer: null,
  };
  // Read by the browser tests, and handy in the developer console.
  window.lokstreamViewer = state;

  const $ = (id) => document.getElementById(id);

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setState(name, label) {
    const badge = $('state');
    badge.dataset.state = name;
    badge.textContent = label;
  }

  function streamUrl() {
    const params = new URLSearchParams();
    for (const channel of state.channels) params.append('channel', channel);
    // A new EventSource cannot send Last-Event-ID, so a manual reconnect passes it here.
    if (state.lastEventId) params.set('lastEventId', state.lastEventId);
    return '/api/stream.json?' + params.toString();
  }

  function connect() {
    if (state.source) state.source.close();
    clearTimeout(state.retryTimer);
    state.source = null;
    if (state.channels.length === 0) {
      setState('idle', 'pick a channel');
      return;
    }
    setState(state.opens ? 'reconnecting' : 'connecting', 'connecting…');

    const source = new EventSource(streamUrl());
    state.source = source;
    source.onopen = () => {
      state.opens += 1;
      const again = state.opens > 1 ? ` (reconnected ${state.opens - 1}×)` : '';
      setState('live', 'live' + again);
    };
    source.onmessage = onMessage;
    source.addEventListener('gap', onGap);
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // An error status (400, 503) makes EventSource give up; retry later, resuming.
        setState('closed', 'disconnected; retrying');
        state.retryTimer = setTimeout(connect, CLOSED_RETRY_MS);
      } else {
        setState('reconnecting', 'reconnecting…');
      }
    };
  }

  function remember(id) {
    state.seen.add(id);
    state.seenOrder.push(id);
    if (state.seenOrder.length > SEEN_IDS_KEPT) state.seen.delete(state.seenOrder.shift());
  }

  function onMessage(event) {
    if (event.lastEventId) {
      if (state.seen.has(event.lastEventId)) state.duplicates += 1;
      remember(event.lastEventId);
      state.lastEventId = event.lastEventId;
    }
    state.received += 1;
    const second = Math.floor(Date.now() / 1000);
    state.perSecond.set(second, (state.perSecond.get(second) || 0) + 1);

    let message = null;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      // Device topics may carry plain text; it is shown as it is.
    }
    addRow(messageRow(event, message && typeof message === 'object' ? message : null));
    $('count').textContent = String(state.received);
    scheduleDraw();
  }

  function hashtagsOf(message) {
    const tags = new Set();
    if (Array.isArray(message.hashtags)) message.hashtags.forEach((tag) => tags.add(String(tag)));
    const text = typeof message.text === 'string' ? message.text : '';
    for (const match of text.matchAll(/(?:^|[^\p{L}\p{N}_&/])#([\p{L}\p{N}_]+)/gu)) tags.add(match[1]);
    return [...tags];
  }

  function timeOf(message) {
    const created = message && Date.parse(message.created_at);
    return Number.isNaN(created) || !created ? new Date() : new Date(created);
  }

  function messageRow(event, message) {
    const row = element('li', 'message');
    row.dataset.eventId = event.lastEventId;
    const meta = element('div', 'meta');
    const time = element('time', null, timeOf(message).toLocaleString());
    meta.append(time);
    if (message) {
      const user = message.screen_name || (message.user && message.user.screen_name);
      if (user) meta.append(element('span', 'user', '@' + user));
      if (message.source_type) meta.append(element('span', 'source', String(message.source_type).toLowerCase()));
      if (message.id_str !== undefined) row.dataset.idStr = String(message.id_str);
    }
    row.append(meta);
    const text = message && typeof message.text === 'string' ? message.text : event.data;
    row.append(element('p', 'text', text));
    if (message) {
      const tags = element('div', 'tags');
      for (const tag of hashtagsOf(message)) tags.append(element('span', null, '#' + tag));
      if (tags.childElementCount) row.append(tags);
    }
    return row;
  }

  function onGap(event) {
    state.gaps += 1;
    let detail = {};
    try {
      detail = JSON.parse(event.data);
    } catch (error) {
      // The notice below still warns that messages may be missing.
    }
    const text = detail.reason === 'broker_dropped'
      ? `Gap: the server dropped ${Number(detail.lost) || 'some'} messages of these channels.`
      : 'Gap: messages sent while this page was disconnected may be missing.';
    addRow(element('li', 'gap', text));
  }

  function addRow(row) {
    const list = $('messages');
    list.prepend(row);
    while (list.childElementCount > MAX_ROWS) list.lastElementChild.remove();
  }

  // Draws one bar per second of the last minute, the current second included, at the
  // screen's pixel density.
  function drawChart() {
    drawPending = false;
    const canvas = $('chart');
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * ratio);
    const height = Math.round(canvas.clientHeight * ratio);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const now = Math.floor(Date.now() / 1000);
    const counts = [];
    for (let second = now - CHART_SECONDS + 1; second <= now; second += 1) counts.push(state.perSecond.get(second) || 0);
    for (const second of state.perSecond.keys()) if (second <= now - CHART_SECONDS) state.perSecond.delete(second);

    const max = Math.max(1, ...counts);
    const top = 16 * ratio;
    const bar = width / CHART_SECONDS;
    const context = canvas.getContext('2d');
    context.clearRect(0, 0, width, height);
    context.fillStyle = '#2c6bed';
    counts.forEach((count, index) => {
      const barHeight = (count / max) * (height - top);
      context.fillRect(index * bar + ratio, height - barHeight, Math.max(ratio, bar - 2 * ratio), barHeight);
    });
    context.fillStyle = '#6b7385';
    context.font = `${11 * ratio}px system-ui, sans-serif`;
    context.fillText(`max ${max}/s`, 4 * ratio, 12 * ratio);
    const recent = counts.slice(-RATE_SECONDS).reduce((sum, count) => sum + count, 0);
    $('rate').textContent = `${(recent / RATE_SECONDS).toFixed(1)} msg/s over ${RATE_SECONDS} s`;
  }

  let drawPending = false;
  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(drawChart);
  }

  function renderChosen() {
    const list = $('chosen');
    list.replaceChildren();
    for (const channel of state.channels) {
      const chip = element('li', null, channel);
      const remove = element('span', 'remove', '×');
      remove.title = 'remove ' + channel;
      chip.append(remove);
      chip.addEventListener('click', () => setChannels(state.channels.filter((c) => c !== channel)));
      list.append(chip);
    }
  }

  function setChannels(channels) {
    state.channels = [...new Set(channels)];
    // A new choice starts live: resuming would replay other channels' history.
    state.lastEventId = '';
    const params = new URLSearchParams();
    for (const channel of state.channels) params.append('channel', channel);
    const query = params.toString();
    history.replaceState(null, '', query ? '?' + query : location.pathname);
    renderChosen();
    connect();
  }

  async function refreshSuggestions() {
    try {
      const response = await fetch('/api/channels.json?limit=12');
      if (!response.ok) return;
      const body = await response.json();
      const list = $('suggestions');
      list.replaceChildren();
      for (const { channel, messages } of body.channels) {
        const chip = element('li', null, channel);
        chip.append(element('small', null, String(messages)));
        chip.addEventListener('click', () => setChannels([...state.channels, channel]));
        list.append(chip);
      }
      $('no-suggestions').hidden = body.channels.length > 0;
    } catch (error) {
      // The server is unreachable, which the connection state already shows.
    }
  }

  $('channel-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('channel-input');
    const channel = input.value.trim();
    if (channel) setChannels([...state.channels, channel]);
    input.value = '';
  });

  setChannels(new URLSearchParams(location.search).getAll('channel'));
  refreshSuggestions();
  setInterval(refreshSuggestions, SUGGESTIONS_REFRESH_MS);
  setInterval(scheduleDraw, 1000);
  scheduleDraw();
})();
