"""Delivering task callbacks: POST the task JSON to its callback_url on each status change.

One thread sends them in order. The `callback-drop`, `callback-repeat` and `callback-reorder`
faults drop, repeat or reorder deliveries; with a webhook secret each delivery is signed
(Standard Webhooks headers).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from kling_expand_plugin.kling import webhooks
from kling_expand_plugin.localserver.faults import Faults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One callback message: the task as it was at one status change."""

    url: str
    task_id: str
    body: bytes
    final: bool
    msg_id: str


class CallbackSender:
    """Sends callbacks on a background thread, in the order they were queued (faults aside)."""

    def __init__(
        self, faults: Faults, *, webhook_secret: str | None = None, timeout: float = 5.0
    ) -> None:
        if webhook_secret is not None:
            webhooks.sign(webhook_secret, "check", 0, b"")  # fail early on a malformed secret
        self._faults = faults
        self._secret = webhook_secret
        self._timeout = timeout
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._held: dict[str, Delivery] = {}
        self._counts = {"queued": 0, "sent": 0, "dropped": 0, "failed": 0}
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="kling-local-callbacks", daemon=True)

    def __repr__(self) -> str:
        return f"CallbackSender(signed={self._secret is not None})"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the delivery in progress; deliveries still queued are discarded."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=self._timeout + 1)
        self._session.close()

    def enqueue(self, url: str, task: dict[str, Any], *, final: bool) -> None:
        """Queue the task's current JSON for delivery to `url`."""
        body = json.dumps(task, separators=(",", ":")).encode()
        delivery = Delivery(url, task["task_id"], body, final, f"msg_{uuid.uuid4().hex}")
        self._count("queued")
        self._queue.put(delivery)

    def counts(self) -> dict[str, int]:
        """Deliveries queued, sent (answered 2xx), dropped by fault, failed."""
        with self._lock:
            return dict(self._counts)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _run(self) -> None:
        while True:
            delivery = self._queue.get()
            if delivery is None:
                return
            self._dispatch(delivery)

    def _dispatch(self, delivery: Delivery) -> None:
        if self._faults.fires("callback-drop"):
            self._count("dropped")
            return
        held = self._held.pop(delivery.task_id, None)
        if held is None and not delivery.final and self._faults.fires("callback-reorder"):
            self._held[delivery.task_id] = delivery
            return
        self._send(delivery)
        if self._faults.fires("callback-repeat"):
            self._send(delivery)
        if held is not None:
            self._send(held)

    def _send(self, delivery: Delivery) -> None:
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            timestamp = int(time.time())
            headers["webhook-id"] = delivery.msg_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = webhooks.sign(
                self._secret, delivery.msg_id, timestamp, delivery.body
            )
        try:
            response = self._session.post(
                delivery.url, data=delivery.body, headers=headers, timeout=self._timeout
            )
        except requests.RequestException as error:
            # The path may hold the receiver's per-task secret: name the host only.
            where = urlsplit(delivery.url).netloc
            log.warning("callback to %s failed: %s", where, type(error).__name__)
            self._count("failed")
            return
        self._count("sent" if response.ok else "failed")
