"""The answer log: each usable answer of an API stage journaled by its request, as it arrives.

A rerun after failed requests then sends only those again and gets the other answers back
exactly, with what they had cost when they were asked. ``ChatClient.record_answers`` attaches a
log to a client; the log never judges whether an answer is usable (the client only puts answers
its ``parse`` accepted).
"""

from __future__ import annotations

import hashlib
import json
import threading


class AnswerLog:
    """Usable answers of one stage's requests, journaled by request (a hash of its JSON body).

    ``journal`` is a ``rlaif.journal.Journal``; each answer is one line, written when it arrives,
    so answers survive a kill or a failed batch and a rerun sends only the requests that got none.
    """

    def __init__(self, journal):
        self.journal = journal
        self._lock = threading.Lock()
        self.replayed = 0  # answers served from the log in this process

    @property
    def reused_spent(self) -> dict[str, float]:
        """What the answers served from the log had cost when they were asked (``add_spent`` adds it)."""
        return self.journal.reused_spent

    @staticmethod
    def key(url: str, body: dict) -> str:
        return hashlib.sha256(json.dumps([url, body], sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]

    def get(self, key: str) -> dict | None:
        with self._lock:
            rows = self.journal.lookup(key, [key])
            if rows is None:
                return None
            self.replayed += 1
            return rows[0]

    def put(self, key: str, data: dict, spent: dict[str, float]) -> None:
        with self._lock:
            self.journal.append(key, [key], [data], spent=spent)
