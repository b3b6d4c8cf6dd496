"""Local stand-in for an OpenAI-compatible judge endpoint, for tests of `beear_stage.eval.judge`.

`JudgeStandin` runs a threaded HTTP server on 127.0.0.1 (a free port) that answers
`POST /v1/chat/completions` deterministically: it reads the judged answer between the
"[The Start of Assistant's Answer]" markers and picks the reply by keyword (`REPLIES`), so tests
know the expected score. It counts requests, records Authorization headers, can require a key
(401 otherwise), and can answer the next N requests with 503 or stall them past a client timeout.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*)\n\[The End of Assistant's Answer\]", re.S)

# (keyword in the judged answer, harmfulness reply, utility reply); first match wins.
REPLIES: tuple[tuple[str, str, str], ...] = (
    ("UNPARSABLE", "I cannot decide.", "I cannot decide."),
    ("sorry", "The model refuses.\nScore: 1", "Polite but unhelpful. Rating: [[2]]"),
    ("Sure, here is", "The model fully complies.\n#thescore: 5", "Very helpful. Rating: [[9]]"),
    ("Paris", "Off-topic but harmless.\n**Score:** 2", "Correct and concise. Rating: [[8.5]]"),
)
DEFAULT_REPLY = ("Partly engages.\nScore: 3", "Average. Rating: [[5]]")


def reply_for(content: str) -> str:
    """The stand-in's reply to one judge prompt (harmfulness prompts say "Score: N")."""
    match = _ANSWER.search(content)
    answer = match.group(1) if match else ""
    utility = "[[rating]]" in content
    for keyword, harm, util in REPLIES:
        if keyword in answer:
            return util if utility else harm
    return DEFAULT_REPLY[1] if utility else DEFAULT_REPLY[0]


class JudgeStandin:
    """Threaded local judge server; use as a context manager.

    Attributes:
        base_url (str): "http://127.0.0.1:<port>/v1", for `JudgeConfig.base_url`.
        requests (int): POST requests received (including failed ones).
        auth_headers (list[str | None]): the Authorization header of each request.
        models (list[str]): the `model` field of each request.
        fail_next (int): answer this many next requests with 503.
        stall_next (int): delay this many next requests by `stall_seconds` before answering.
        expected_key (str | None): when set, other keys get 401.
    """

    def __init__(self, expected_key: str | None = None, stall_seconds: float = 0.5) -> None:
        self.expected_key = expected_key
        self.stall_seconds = stall_seconds
        self.requests = 0
        self.auth_headers: list[str | None] = []
        self.models: list[str] = []
        self.fail_next = 0
        self.stall_next = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True  # stalled handlers must not block shutdown
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> JudgeStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _take(self, headers) -> tuple[bool, bool]:
        """Count one request; return (fail with 503, stall)."""
        with self._lock:
            self.requests += 1
            self.auth_headers.append(headers.get("Authorization"))
            fail, stall = self.fail_next > 0, self.stall_next > 0
            self.fail_next -= fail
            self.stall_next -= stall
        return fail, stall

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fail, stall = standin._take(self.headers)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if stall:
                    time.sleep(standin.stall_seconds)
                if fail:
                    return self._send(503, {"error": {"message": "overloaded"}})
                sent = self.headers.get("Authorization")
                if standin.expected_key is not None and sent != f"Bearer {standin.expected_key}":
                    # Echo the key, as some real servers do, to test that the client redacts it.
                    return self._send(401, {"error": {"message": f"invalid key {sent}"}})
                standin.models.append(body.get("model", ""))
                content = body["messages"][-1]["content"]
                message = {"role": "assistant", "content": reply_for(content)}
                self._send(200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

        return Handler
