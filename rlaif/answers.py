"""API answers journaled one by one, for every stage that calls an API judge (labelling, probes,
evaluation): a rerun after a kill or a failed request sends only the requests that had no usable
answer, and their spend is still counted."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rlaif.journal import Journal, spent_since


class Answers:
    """The answer log and failure count of ``answers_journaled``'s API clients."""

    def __init__(self, log, clients: list):
        self.log, self.clients = log, clients  # log: None when nothing is journaled

    def reused(self) -> dict:
        """What the answers read back from the log so far had cost (their earlier attempts' spend)."""
        return dict(self.log.journal.reused_spent) if self.log is not None else {}

    def failures(self) -> int:
        return sum(c.failures for c in self.clients)

    def spent(self, accounting, before: dict | None, replayed: dict) -> dict | None:
        """``spent_since`` plus the answers of earlier attempts served from the log since ``replayed``."""
        spent = spent_since(accounting, before)
        if spent is not None and self.log is not None:
            for k, v in self.log.journal.reused_spent.items():
                if k in spent:
                    spent[k] += v - replayed.get(k, 0)
        return spent


@contextlib.contextmanager
def answers_journaled(judges: list[tuple[Any, str]], path: Path | None):
    """The labelling stage's rule (``rank_in_chunks``) for the judge requests of a later stage.

    Each usable answer of the API judges in ``judges`` ((judge or None, config key of its
    ``max_failed_share``)) is journaled at ``path`` as it arrives and served from there on a rerun,
    so a rerun sends only the requests that failed (``path`` None: nothing is journaled). When the
    body is done, more failures than a judge's ``max_failed_share`` raise ``RequestsFailed``, before
    the stage's results can be cached.
    """
    from rlaif.backends.api import AnswerLog
    from rlaif.judges.base import api_clients

    clients: list = []
    for j, setting in judges:
        for c in api_clients(j) if j is not None else []:
            if all(c is not x for x, _ in clients):
                clients.append((c, setting))
    answers = Answers(AnswerLog(Journal(path)) if path is not None and clients else None, [c for c, _ in clients])
    start = [(c.requests, c.failures) for c, _ in clients]
    for c, _ in clients:
        c.record_answers(answers.log)
    try:
        yield answers
    finally:
        for c, _ in clients:
            c.record_answers(None)
    for (c, setting), (requests, failures) in zip(clients, start, strict=True):
        c.check_failures(c.failures - failures, c.requests - requests, "judge requests", setting)


def answer_logs(obj) -> list:
    """The answer logs an API generator's or judge's clients replayed from (their spend counts too)."""
    from rlaif.judges.base import api_clients

    clients = [obj.client] if hasattr(getattr(obj, "client", None), "answer_logs") else api_clients(obj)
    return [log for c in clients for log in c.answer_logs]
