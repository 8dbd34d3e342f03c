// The chat's browser client: one websocket, one render function per frame type.
// Every name and text is put on the page with textContent, never as HTML.

const config = JSON.parse(document.getElementById("chat-config").textContent);
const $ = (id) => document.getElementById(id);
const els = {
  status: $("status"), messages: $("messages"), presence: $("presence"), older: $("older"),
  presenceCount: $("presence-count"), presenceMore: $("presence-more"),
  name: $("username"), nameState: $("name-state"), compose: $("compose"), input: $("message"),
};

const state = {
  socket: null,
  attempt: 0,                 // reconnect attempts since the last welcome
  authorId: config.author_id,
  username: config.username,  // the name the server says we have
  wantedName: null,           // a name typed but not yet confirmed
  known: new Set(),           // ids of the messages on the page
  lastId: 0,                  // newest message id seen: what `resume` asks after
  pending: new Map(),         // client_id -> text, sent without an echo yet
  requests: [],               // reads ({kind: "older" | "resume", clientId, fields}) in the order sent
  reads: 0,                   // numbers the reads' client_ids
  people: new Map(),          // author_id -> listed person: the last snapshot plus the diffs since
  nameTimer: null,
};

// --- Messages ----------------------------------------------------------------

function formatTime(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// The mark of a signed-in staff member (`verified`), on messages and in the people list.
function staffBadge() {
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.title = "signed-in staff";
  badge.textContent = "staff";
  return badge;
}

function messageElement(m) {
  const li = document.createElement("li");
  li.className = "message" + (m.author_id === state.authorId ? " own" : "");
  li.dataset.testid = "message";
  li.dataset.messageId = String(m.id);
  li.dataset.authorId = m.author_id;
  const meta = li.appendChild(document.createElement("span"));
  meta.className = "meta";
  const author = meta.appendChild(document.createElement("span"));
  author.className = "author";
  author.dataset.testid = "message-author";
  author.dir = "auto";
  author.textContent = m.username;
  if (m.verified) meta.appendChild(staffBadge());
  const time = meta.appendChild(document.createElement("time"));
  time.dateTime = m.ts;
  time.textContent = formatTime(m.ts);
  const text = li.appendChild(document.createElement("span"));
  text.className = "text";
  text.dataset.testid = "message-text";
  text.dir = "auto";
  text.textContent = m.text;
  return li;
}

function nearBottom() {
  const list = els.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToBottom() {
  els.messages.scrollTop = els.messages.scrollHeight;
}

// Insert a stored message in id order; a message already shown is skipped.
function addMessage(m) {
  if (state.known.has(m.id)) return;
  state.known.add(m.id);
  state.lastId = Math.max(state.lastId, m.id);
  const li = messageElement(m);
  let next = null;
  for (const other of els.messages.querySelectorAll("[data-testid=message]")) {
    if (Number(other.dataset.messageId) > m.id) { next = other; break; }
  }
  els.messages.insertBefore(li, next || firstPending());
  if (m.client_id && state.pending.has(m.client_id)) {
    state.pending.delete(m.client_id);
    els.messages.querySelector(`[data-client-id="${CSS.escape(m.client_id)}"]`)?.remove();
  }
}

// Take messages staff deleted off the page; they are never shown again.
function removeMessages(ids) {
  for (const id of ids) {
    state.known.add(id);
    els.messages.querySelector(`[data-testid=message][data-message-id="${id}"]`)?.remove();
  }
}

function firstPending() {
  return els.messages.querySelector("[data-testid=message-pending]");
}

function oldestId() {
  const first = els.messages.querySelector("[data-testid=message]");
  return first ? Number(first.dataset.messageId) : null;
}

function addNotice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  els.messages.insertBefore(li, firstPending());
}

// --- Frames from the server: one render function per type ----------------------

const render = {
  welcome(frame) {
    state.attempt = 0;
    state.authorId = frame.author_id;
    setStatus("connected");
    applyName(frame.username, { saved: false });
    // A name typed while offline goes before the messages typed after it.
    if (state.wantedName !== null && state.wantedName !== state.username) sendName();
    // A message sent before the socket dropped may be among those missed:
    // catch up first, then re-send what is still unacknowledged, so each
    // message arrives once.
    if (frame.last_id !== null && frame.last_id > state.lastId) request("resume", { after: state.lastId });
    else resendPending();
  },
  chat(frame) {
    const stick = nearBottom() || state.pending.has(frame.client_id);
    addMessage(frame);
    if (stick) scrollToBottom();
  },
  history(frame) {
    const kind = state.requests.shift()?.kind;
    if (kind === "older") {
      const list = els.messages;
      const fromBottom = list.scrollHeight - list.scrollTop;
      frame.messages.forEach(addMessage);
      list.scrollTop = list.scrollHeight - fromBottom;  // keep the reader's place
      els.older.hidden = !frame.has_more;
      els.older.disabled = false;
    } else {
      // A `resume` answer: also what staff deleted while this tab was away.
      removeMessages(frame.deleted ?? []);
      const stick = nearBottom();
      frame.messages.forEach(addMessage);
      if (stick) scrollToBottom();
      // The next page follows this one, not the newest id shown: live
      // messages that came meanwhile are newer than the gap still missing.
      if (frame.has_more) request("resume", { after: frame.messages[frame.messages.length - 1].id });
      else resendPending();
    }
  },
  deleted(frame) {
    removeMessages(frame.ids);
  },
  identity(frame) {
    applyName(frame.username);
  },
  renamed(frame) {
    if (frame.author_id !== state.authorId) addNotice(`${frame.old} is now ${frame.username}`);
  },
  presence(frame) {
    state.people = new Map(frame.users.map((user) => [user.author_id, user]));
    showPeople(frame.count);
  },
  presence_diff(frame) {
    for (const authorId of frame.left) state.people.delete(authorId);
    for (const user of frame.joined) state.people.set(user.author_id, user);
    showPeople(frame.count);
  },
  error(frame) {
    const read = frame.client_id ? state.requests.find((r) => r.clientId === frame.client_id) : null;
    if (read) {
      // A refused read gets no other answer: ask again after the wait.
      state.requests.splice(state.requests.indexOf(read), 1);
      if (frame.code === "rate_limited" || frame.code === "unavailable") {
        const socket = state.socket;
        setTimeout(() => { if (state.socket === socket) request(read.kind, read.fields); },
          (frame.retry_after ?? 2) * 1000);
      } else if (read.kind === "older") {
        els.older.disabled = false;
      }
      return;
    }
    const item = frame.client_id && state.pending.has(frame.client_id) ? frame.client_id : null;
    if (frame.code === "rate_limited" || frame.code === "unavailable") {
      const wait = (frame.retry_after ?? 2) * 1000;
      if (item) setTimeout(() => resend(item), wait);
      else if (state.wantedName !== null) setTimeout(sendName, wait);
      return;
    }
    if (frame.code === "invalid_username") {
      state.wantedName = null;
      els.nameState.textContent = frame.message;
      els.nameState.className = "name-state bad";
      return;
    }
    if (item) {
      state.pending.delete(item);
      const li = els.messages.querySelector(`[data-client-id="${CSS.escape(item)}"]`);
      if (li) {
        // Said in words, not only by the red border: read out by the live log too.
        li.classList.add("failed");
        const why = li.appendChild(document.createElement("span"));
        why.className = "failure";
        why.textContent = `not sent: ${frame.message}`;
      }
    }
    console.warn("chat: server refused a frame:", frame.code, frame.message);
  },
  pong() {},
};

// --- People in the room ------------------------------------------------------------

function personElement(user) {
  const li = document.createElement("li");
  li.dataset.testid = "presence-user";
  li.dataset.authorId = user.author_id;
  li.className = user.author_id === state.authorId ? "me" : "";
  const name = li.appendChild(document.createElement("span"));
  name.dir = "auto";
  name.textContent = user.username;
  if (user.verified) li.appendChild(staffBadge());
  if (user.tabs > 1) {
    const tabs = li.appendChild(document.createElement("span"));
    tabs.className = "tabs";
    tabs.textContent = `${user.tabs} tabs`;
  }
  return li;
}

// The server lists at most 100 people (the first to come) and counts everyone.
function showPeople(count) {
  const byName = (a, b) => a.username.localeCompare(b.username, undefined, { sensitivity: "base" });
  els.presence.replaceChildren(...[...state.people.values()].sort(byName).map(personElement));
  els.presenceCount.textContent = String(count);
  const more = count - state.people.size;
  els.presenceMore.hidden = more <= 0;
  els.presenceMore.textContent = more > 0 ? `and ${more} more` : "";
}

// --- The socket ------------------------------------------------------------------

function setStatus(text) {
  els.status.textContent = text;
  els.status.dataset.state = text;
}

function send(frame) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function resendPending() {
  for (const [clientId, text] of state.pending) send({ type: "chat", text, client_id: clientId });
}

function request(kind, fields) {
  // The client_id comes back on an error about the read (rate_limited), to retry it.
  const clientId = `read-${++state.reads}`;
  if (send({ type: kind === "older" ? "history" : "resume", ...fields, client_id: clientId })) {
    state.requests.push({ kind, clientId, fields });
  }
}

// Each time a socket opens, ask the server which chat.js is current and, until
// it says so, to keep this browser's session (a session that never opened a
// socket lives a day: README "Housekeeping"). A tab whose script a deploy
// replaced (the script's URL holds its content hash) reloads once nothing
// typed or unsent would be lost; else it asks again at the next open.
let sessionKept = config.session_kept;

async function socketOpened() {
  try {
    const response = await fetch(`/socket-opened${sessionKept ? "" : "?keep=1"}`, { method: "POST" });
    if (!response.ok) return;
    const answer = await response.json();
    if (answer.kept) sessionKept = true;
    const replaced = new URL(answer.script, location.href).href !== import.meta.url;
    const idle = !state.pending.size && !els.input.value && state.wantedName === null && els.name.value === state.username;
    if (replaced && idle) {
      setStatus("reloading");
      location.reload();
    }
  } catch {
    // Asked again when the next socket opens.
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/chat/${config.room}/`);
  state.socket = socket;
  state.requests = [];
  setStatus(state.attempt ? "reconnecting" : "connecting");
  socket.addEventListener("open", socketOpened);
  socket.addEventListener("message", (event) => {
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    const handler = Object.hasOwn(render, frame.type) ? render[frame.type] : null;
    if (handler) handler(frame);
  });
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    if (event.code === 4401) {
      // No valid session: the page view creates one.
      setStatus("reloading");
      location.reload();
      return;
    }
    if (event.code === 4403) {
      // Staff blocked this browser: it stays closed (a reload shows it again).
      setStatus("blocked");
      addNotice("A moderator has blocked this browser: you cannot chat here.");
      els.input.disabled = true;
      $("send").disabled = true;
      return;
    }
    if (event.code === 4429) {
      // Too many sockets for this browser: wait for some tabs to close.
      setStatus("too many tabs open");
      setTimeout(connect, 30000 + Math.random() * 10000);
      return;
    }
    state.attempt += 1;
    // Exponential backoff with full jitter, so a restarted server is not
    // hit by every client at the same moment.
    const delay = Math.random() * Math.min(15000, 500 * 2 ** state.attempt);
    setStatus("reconnecting");
    setTimeout(connect, delay);
  });
}

// --- Sending ------------------------------------------------------------------

function newClientId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function resend(clientId) {
  const text = state.pending.get(clientId);
  if (text !== undefined) send({ type: "chat", text, client_id: clientId });
}

function sendMessage(text) {
  const clientId = newClientId();
  state.pending.set(clientId, text);
  const li = document.createElement("li");
  li.className = "message own pending";
  li.dataset.testid = "message-pending";
  li.dataset.clientId = clientId;
  const body = li.appendChild(document.createElement("span"));
  body.className = "text";
  body.dir = "auto";
  body.textContent = text;
  els.messages.appendChild(li);
  scrollToBottom();
  saveNameNow();  // a rename typed just before goes first: the message carries the new name
  send({ type: "chat", text, client_id: clientId });  // if closed, sent on the next welcome
}

els.compose.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = els.input.value.trim();
  if (!text) return;
  els.input.value = "";
  sendMessage(text);
});

els.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    els.compose.requestSubmit();
  }
});

// --- The name -------------------------------------------------------------------

function applyName(username, { saved = true } = {}) {
  state.username = username;
  // A name the visitor typed and the server has not confirmed yet wins.
  if (state.wantedName !== null && state.wantedName !== username) return;
  state.wantedName = null;
  els.name.value = username;
  els.nameState.textContent = saved ? "saved" : "";
  els.nameState.className = "name-state ok";
}

function sendName() {
  if (state.wantedName === null) return;
  if (send({ type: "rename", username: state.wantedName })) {
    els.nameState.textContent = "saving…";
    els.nameState.className = "name-state";
  }
}

// Send the name still waiting for the visitor to stop typing, now (on Enter,
// on leaving the field, before a chat frame). If the socket is closed, the
// next welcome sends it.
function saveNameNow() {
  if (state.nameTimer === null) return;
  clearTimeout(state.nameTimer);
  state.nameTimer = null;
  sendName();
}

els.name.addEventListener("input", () => {
  clearTimeout(state.nameTimer);
  state.nameTimer = null;
  const wanted = els.name.value.trim();
  els.nameState.textContent = "";
  if (!wanted || wanted === state.username) {
    state.wantedName = null;
    return;
  }
  state.wantedName = wanted;
  state.nameTimer = setTimeout(() => {  // save as the visitor types
    state.nameTimer = null;
    sendName();
  }, 300);
});

els.name.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.isComposing) {
    event.preventDefault();
    saveNameNow();
  }
});

els.name.addEventListener("blur", () => {
  if (!els.name.value.trim()) els.name.value = state.username;
  saveNameNow();
});

// --- Older messages ---------------------------------------------------------------

function loadOlder() {
  const olderAsked = () => state.requests.some((r) => r.kind === "older");
  if (els.older.hidden || els.older.disabled || olderAsked()) return;
  els.older.disabled = true;
  request("older", { before: oldestId(), limit: config.page_size });
  if (!olderAsked()) els.older.disabled = false;
}

els.older.addEventListener("click", loadOlder);
els.messages.addEventListener("scroll", () => {
  if (els.messages.scrollTop === 0) loadOlder();
});

// --- Start -----------------------------------------------------------------------

for (const m of config.messages) {
  state.known.add(m.id);
  state.lastId = Math.max(state.lastId, m.id);
}
for (const time of els.messages.querySelectorAll("time")) time.textContent = formatTime(time.dateTime);
scrollToBottom();
connect();
