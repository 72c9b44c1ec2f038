"""`BufferedThreadWorker`: gunicorn's threaded worker, made safe against slow clients and overload.

gunicorn's `gthread` worker hands a connection to a request thread as soon as it is readable,
and the thread then reads the request with blocking calls: a client that sends its headers or
body slowly holds a thread for as long as it likes, and a few of them starve every other
request. Under overload the thread pool's queue grows without bound, so every answer, health
checks included, comes seconds late. This worker keeps gthread's request handling (the same
parser, WSGI environ and response code) and changes what happens around it:

- **Buffering.** The event loop (the main thread) reads every connection without blocking into
  its own buffer until the request is complete: the end of the headers, then the body by its
  Content-Length, or chunk by chunk up to the last chunk and the trailers. Only a complete request
  reaches a request thread, with its bytes handed to the parser, so the thread never waits for
  the client. A request over the limits (headers past gunicorn's `limit_request_*`, a body over
  the apps' body limit) or whose framing the parser must judge (conflicting Content-Length and
  Transfer-Encoding, say) is handed over at once, so that gunicorn answers 431/414/400 and the
  app 413 without the whole thing being read. A connection that has not sent a whole request
  within `DC_REQUEST_READ_TIMEOUT_S` of its first byte (of its opening, for a new connection) is
  answered 408 and closed; an idle kept-alive connection is closed after gunicorn's `keepalive`.
- **Load shedding.** A complete request that has waited `DC_MAX_QUEUE_WAIT_MS` for a request
  thread without getting one is answered 429 `overloaded` with `Retry-After:
  DC_RETRY_AFTER_S` by the event loop itself (its queued job is cancelled), and its connection
  is closed. The wait counts from the loop's turn that read the request's last bytes, and the
  loop wakes up when the oldest waiting request reaches the bound, so the answer leaves at the
  bound, not up to a second later.
- **A priority lane.** `GET`/`HEAD` of `/health`, `/ready` and `/metrics` run on two threads of
  their own and are never shed, so probes and scrapes answer while the request threads are
  saturated.
- **The error envelope.** gunicorn's own rejections (400 for a malformed request line, header,
  chunked body, or conflicting Content-Length/Transfer-Encoding; 414, 431, 417, 501, 500) and
  this worker's 408, 429 and 400 answer the services' JSON envelope
  `{"error": {"code", "message", "status", "request_id"}}` with `Connection: close` instead of
  gunicorn's HTML page; the message is generic (the detail goes to the server log) and
  `request_id` is fresh. Not covered: a connection whose answer had already begun when the app
  failed is closed as it is (nothing can be answered any more), and a worker the master kills
  for missing its `timeout` resets its connections.
- **Bounded sockets in threads.** Each connection gets `SO_SNDTIMEO` of the read timeout, so a
  client that does not read its answer cannot hold a thread for longer than that per send; any
  read a thread still makes (only when the parser disagrees with the loop's framing) stops at
  the request's read deadline.
- **Graceful shutdown.** On SIGTERM the worker accepts what is already waiting in the listen
  backlog, then closes its listening sockets; it finishes every request whose bytes arrived
  (buffered, queued or running), answers requests that arrive on kept-alive connections within
  a short linger with `Connection: close`, and exits within `graceful_timeout`.
- **Closing.** After a connection's last answer the loop closes it at once when the client has
  nothing more on its way, else it half-closes and drains it briefly first, so that unread
  bytes do not turn the close into a reset that destroys the answer (gthread lingers in a
  blocking call of the event loop instead).
- **Cheap on the hit path.** Sockets stay in blocking mode (the loop passes `MSG_DONTWAIT`) and
  stay registered with the poller while a thread answers, and the heartbeat is written once a
  second: a kept-alive request costs fewer system calls than under gthread.

HTTP/1.1 over plain TCP only: TLS, HTTP/2 and the PROXY protocol are refused at start-up (the
services run behind a load balancer or proxy that terminates TLS).

The package, top-down (each class builds on the next one down):

- `worker`: `BufferedThreadWorker`, the class gunicorn loads: settings, the run loop and its
  turns, the graceful stop, the stats log.
- `dispatch`: `RequestDispatcher`, complete requests to the request pool or the priority lane
  and back, the thread-side `handle`, shedding at the bound, gunicorn's errors answered.
- `loop`: `ConnectionLoop` (on gthread's `ThreadWorker`), each connection on the event loop
  from accept to close: reading into its buffer, the read and idle timers, answering from the
  loop, closing after a drain.
- `framing`: `Framer`, whether a buffer holds a complete request.
- `connection`: `Connection` (one connection's state), the loop's `Wakeup` pipe, the parser's
  `DeadlineUnreader`.
- `responses`: the JSON error envelope and the status and message of each gunicorn error.
"""

from web.worker.dispatch import PRIORITY_THREADS
from web.worker.framing import PRIORITY_METHODS, PRIORITY_PATHS
from web.worker.responses import envelope_response
from web.worker.worker import BufferedThreadWorker

__all__ = [
    "PRIORITY_METHODS",
    "PRIORITY_PATHS",
    "PRIORITY_THREADS",
    "BufferedThreadWorker",
    "envelope_response",
]
