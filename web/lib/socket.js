// The chat WebSocket (`/api/chat/ws`), authenticated by the session cookie on the upgrade.
// One socket for the page, opened on first use and reopened after a drop; frames about a
// turn go to the handler registered for its request id.

const handlers = new Map();
let socket = null;
let opening = null;

function url() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return scheme + '//' + location.host + '/api/chat/ws';
}

function open() {
  if (socket && socket.readyState === WebSocket.OPEN) return Promise.resolve(socket);
  if (opening) return opening;
  opening = new Promise((resolve, reject) => {
    const ws = new WebSocket(url());
    ws.addEventListener('open', () => {
      socket = ws;
      opening = null;
      resolve(ws);
    });
    ws.addEventListener('message', (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      const handler = frame.request_id && handlers.get(frame.request_id);
      if (handler) handler(frame);
    });
    ws.addEventListener('close', () => {
      if (socket === ws) socket = null;
      if (opening) {
        opening = null;
        reject(new Error('could not connect to the chat service'));
      }
      // Turns in flight on this socket were stopped by the server; tell their views.
      for (const [requestId, handler] of handlers) {
        handler({ type: 'error', request_id: requestId, error: { message: 'connection lost; the answer was stopped' } });
      }
      handlers.clear();
    });
  });
  return opening;
}

// Starts a turn; `onFrame` receives each frame of it until `response_complete` or `error`.
export async function startTurn(data, onFrame) {
  const ws = await open();
  const requestId = crypto.randomUUID();
  handlers.set(requestId, (frame) => {
    if (frame.type === 'response_complete' || frame.type === 'error') handlers.delete(requestId);
    onFrame(frame);
  });
  ws.send(JSON.stringify({ type: 'message', data: { ...data, request_id: requestId } }));
  return requestId;
}

export function cancelTurn(requestId) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: 'cancel', request_id: requestId }));
  }
}
