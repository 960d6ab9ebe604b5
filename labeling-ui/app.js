// The labeling page: sign in with a token, compare two responses, answer with a button or a key.
// Every text from the server is inserted with textContent, so markup in the data shows verbatim.
'use strict';

const TOKEN_KEY = 'rlhf-label-token';
const $ = (id) => document.getElementById(id);

const state = {
  token: localStorage.getItem(TOKEN_KEY),
  pair: null, // the pair on screen: {pair_id, prompt, left, right}
  busy: false, // a request that changes what is shown is under way
  undoSecs: 30,
  undoUntil: 0, // until when (ms) the last label can still be taken back
  undoTimer: null,
  shown: 0, // counts pairs shown, so that tests can wait for the next one
  progress: null, // {labels, remaining} as last read from /api/stats, kept up locally
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls the API; resolves to the parsed JSON body (null for 204), rejects with ApiError.
async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}` } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, `Cannot reach the server (${error.message}).`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: the raw text becomes the error message below
  }
  if (!response.ok) {
    const detail = (data && data.error) || text || response.statusText;
    throw new ApiError(response.status, `Server answered ${response.status}: ${detail}`);
  }
  return data;
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

function notify(message) {
  $('notice').textContent = message;
}

// Shows one of the three views: 'sign-in', 'labeling' or 'done'.
function showView(view) {
  $('sign-in').hidden = view !== 'sign-in';
  $('labeling').hidden = view !== 'labeling';
  $('done').hidden = view !== 'done';
  $('sign-out').hidden = view === 'sign-in';
  document.body.dataset.view = view;
}

function signOut(message) {
  state.token = null;
  state.pair = null;
  localStorage.removeItem(TOKEN_KEY);
  $('progress').textContent = '';
  $('who').textContent = '';
  notify('');
  showView('sign-in');
  if (message) showError(message);
  $('token').focus();
}

// Handles a failed request: a rejected token signs out, anything else is shown.
function fail(error) {
  if (error.status === 401) {
    signOut('That token was not accepted. Check it and sign in again.');
  } else {
    showError(error.message);
  }
}

// Reads the annotator's progress from the server. It counts over every pair, so the page asks
// only on sign-in, after an undo and when nothing is left; a label updates it locally.
async function refreshProgress() {
  try {
    const stats = await api('GET', '/api/stats');
    state.undoSecs = stats.undo_secs;
    $('undo-secs').textContent = String(stats.undo_secs);
    $('who').textContent = `Signed in as ${stats.you.name}`;
    state.progress = { labels: stats.you.labels, remaining: stats.you.remaining };
    showProgress();
  } catch (error) {
    fail(error);
  }
}

function showProgress() {
  const { labels, remaining } = state.progress;
  $('progress').textContent = `${labels} done · ${remaining} remaining`;
}

// One more label of ours: one fewer pair left for us (others' labels show at the next refresh).
function countLabel() {
  if (!state.progress) return;
  state.progress.labels += 1;
  state.progress.remaining = Math.max(0, state.progress.remaining - 1);
  showProgress();
}

// A conversational prompt, turn by turn: each message a list item with its role and its text,
// both set as text (never parsed as markup).
function showConversation(messages) {
  const list = $('conversation');
  list.replaceChildren(...(messages ?? []).map((message) => {
    const turn = document.createElement('li');
    turn.className = `turn ${message.role}`;
    turn.dataset.role = message.role;
    const role = document.createElement('span');
    role.className = 'role';
    role.textContent = message.role;
    const content = document.createElement('div');
    content.className = 'content';
    content.textContent = message.content;
    turn.append(role, content);
    return turn;
  }));
  list.hidden = !messages;
  $('prompt').hidden = Boolean(messages);
}

function showPair(pair) {
  state.pair = pair;
  $('prompt').textContent = pair.messages ? '' : pair.prompt;
  showConversation(pair.messages);
  $('left').textContent = pair.left;
  $('right').textContent = pair.right;
  for (const id of ['prompt', 'conversation', 'left', 'right']) $(id).scrollTop = 0;
  state.shown += 1;
  const section = $('labeling');
  section.dataset.pairId = String(pair.pair_id);
  section.dataset.shown = String(state.shown);
  showView('labeling');
}

async function loadNext() {
  const pair = await api('GET', '/api/pairs/next');
  if (pair) {
    showPair(pair);
  } else {
    state.pair = null;
    showView('done');
    refreshProgress();
  }
}

// Runs one action at a time; keys pressed meanwhile are ignored rather than queued, so a
// double press never labels the next pair by accident.
async function exclusive(action) {
  if (state.busy) return;
  state.busy = true;
  document.body.setAttribute('aria-busy', 'true');
  try {
    await action();
  } catch (error) {
    fail(error);
  } finally {
    state.busy = false;
    document.body.setAttribute('aria-busy', 'false');
  }
}

const ANSWER_WORDS = { left: 'left is better', right: 'right is better', tie: 'tie', skip: 'skipped' };

function answer(preferred) {
  return exclusive(async () => {
    if (!state.pair) return;
    const pairId = state.pair.pair_id;
    try {
      await api('POST', '/api/labels', { pair_id: pairId, preferred });
      clearError();
      notify(`Saved pair ${pairId}: ${ANSWER_WORDS[preferred]}.`);
      armUndo();
      countLabel();
    } catch (error) {
      // 409: labeled already or given to someone else; either way this pair is settled.
      if (error.status !== 409) throw error;
      showError(error.message);
    }
    await loadNext();
  });
}

function undo() {
  return exclusive(async () => {
    if (Date.now() > state.undoUntil) {
      notify(`Nothing to undo: only your last label, within ${state.undoSecs} s.`);
      return;
    }
    const label = await api('DELETE', '/api/labels/last');
    disarmUndo();
    clearError();
    notify(`Undid your label of pair ${label.pair_id}; label it again.`);
    await loadNext();
    await refreshProgress();
  });
}

function armUndo() {
  state.undoUntil = Date.now() + state.undoSecs * 1000;
  $('undo').disabled = false;
  clearTimeout(state.undoTimer);
  state.undoTimer = setTimeout(disarmUndo, state.undoSecs * 1000);
}

function disarmUndo() {
  state.undoUntil = 0;
  $('undo').disabled = true;
  clearTimeout(state.undoTimer);
}

async function start() {
  clearError();
  showView('labeling');
  await exclusive(async () => {
    await refreshProgress();
    if (state.token) await loadNext();
  });
}

const KEYS = {
  ArrowLeft: () => answer('left'),
  1: () => answer('left'),
  ArrowRight: () => answer('right'),
  2: () => answer('right'),
  t: () => answer('tie'),
  s: () => answer('skip'),
  u: () => undo(),
};

document.addEventListener('keydown', (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (event.target instanceof HTMLInputElement || !state.token) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const action = KEYS[key];
  // Undo also works from the "nothing left" view, after the last pair.
  if (!action || (key !== 'u' && $('labeling').hidden)) return;
  event.preventDefault();
  action();
});

$('choose-left').addEventListener('click', () => answer('left'));
$('choose-right').addEventListener('click', () => answer('right'));
$('choose-tie').addEventListener('click', () => answer('tie'));
$('choose-skip').addEventListener('click', () => answer('skip'));
$('undo').addEventListener('click', () => undo());
$('check-again').addEventListener('click', () => exclusive(loadNext));
$('sign-out').addEventListener('click', () => signOut());

$('sign-in').addEventListener('submit', (event) => {
  event.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  state.token = token;
  localStorage.setItem(TOKEN_KEY, token);
  $('token').value = '';
  start();
});

if (state.token) {
  start();
} else {
  signOut();
}
