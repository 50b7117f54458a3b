"""The Image Expansion endpoints (docs/kling-api.md): create a task, query one by task id or
external id, list them.

A create is never re-posted blindly: it always carries a deterministic `external_task_id`, and
after an ambiguous failure (timeout, reset, 5xx, garbled answer) the task is looked up by that
id first, and posted again only if it does not exist.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling import limits
from kling_expand_plugin.kling.errors import (
    InvalidRequestError,
    KlingError,
    NotFoundError,
    ProtocolError,
    ServerError,
    TransportError,
)
from kling_expand_plugin.kling.models import Task
from kling_expand_plugin.kling.transport import Transport
from kling_expand_plugin.kling.wire import tasks_in

EXPAND_PATH = "/v1/images/editing/expand"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpandRequest:
    """One expansion to create. `image` is raw base64 of the file, or an http(s) URL."""

    image: str = field(repr=False)
    ratios: Ratios
    prompt: str = ""
    n: int = 1
    watermark: bool = False
    callback_url: str | None = None
    external_task_id: str | None = None
    """Left None, a deterministic id is derived from the input (see `external_id_for`)."""

    def __post_init__(self) -> None:
        problems = list(self.ratios.problems())
        if not self.image:
            problems.append("image is empty")
        elif self.image.startswith("data:"):
            problems.append("image must be raw base64, without a data: prefix")
        if len(self.prompt) > limits.MAX_PROMPT_CHARS:
            problems.append(f"prompt is longer than {limits.MAX_PROMPT_CHARS} characters")
        if not limits.MIN_N <= self.n <= limits.MAX_N:
            problems.append(f"n = {self.n} is outside {limits.MIN_N}..{limits.MAX_N}")
        if problems:
            raise ValueError("invalid expand request: " + "; ".join(problems))

    @staticmethod
    def external_id_for(
        image: bytes | str,
        ratios: Ratios,
        prompt: str = "",
        n: int = 1,
        watermark: bool = False,
        *,
        salt: str = "",
    ) -> str:
        """A deterministic id for this input and these parameters: "kep-" + 32 hex digits.

        `image` is the file's bytes, its raw base64, or its URL (bytes and their base64 give the
        same id). The same input always gives the same id, so the API returns the existing
        task instead of running (and charging for) a second one; pass a different `salt` to
        deliberately run the same input again (say, after a failed task).
        """
        digest = hashlib.sha256()
        digest.update(b"kling-expand-plugin/external-id/v1\0")
        digest.update(hashlib.sha256(_image_identity(image)).digest())
        params = {
            "ratios": [f"{value:.6f}" for value in ratios.as_dict().values()],
            "prompt": prompt,
            "n": n,
            "watermark": bool(watermark),
            "salt": salt,
        }
        digest.update(json.dumps(params, sort_keys=True).encode("utf-8"))
        return "kep-" + digest.hexdigest()[:32]

    @property
    def resolved_external_id(self) -> str:
        """`external_task_id` if given, else the id derived from the input."""
        if self.external_task_id:
            return self.external_task_id
        return self.external_id_for(self.image, self.ratios, self.prompt, self.n, self.watermark)

    def body(self) -> dict[str, Any]:
        """The create request's JSON body."""
        body: dict[str, Any] = {
            "image": self.image,
            **self.ratios.as_dict(),
            "n": self.n,
            "external_task_id": self.resolved_external_id,
        }
        if self.prompt:
            body["prompt"] = self.prompt
        if self.watermark:
            body["watermark_info"] = {"enabled": True}
        if self.callback_url:
            body["callback_url"] = self.callback_url
        return body


class ImageExpansion:
    """The expansion endpoints over one transport; thread-safe."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        # "path" or "query": which form of query by external_task_id the server answered.
        self._external_id_form: str | None = None

    def create(self, request: ExpandRequest) -> Task:
        """Create the task, or return the one that already exists under its external_task_id.

        After an ambiguous failure (timeout, connection reset, 5xx, garbled answer) the task is
        looked up by its external_task_id before anything is posted again; an answer 1200/1201
        (such as "external_task_id already used") is also checked against that lookup.
        """
        body = request.body()
        external_id = body["external_task_id"]
        log.debug(
            "create external_task_id=%s image=%s n=%d",
            external_id,
            _describe_image(request.image),
            request.n,
        )
        maybe_created = False

        def attempt() -> Task:
            nonlocal maybe_created
            if maybe_created:
                existing = self._find_by_external_id(external_id)
                if existing is not None:
                    log.info("create %s: found the task already created", external_id)
                    return existing
            try:
                return self._post_create(body, external_id)
            except KlingError as error:
                maybe_created = maybe_created or _is_ambiguous(error)
                raise

        return self._transport.retried(attempt, what=f"create {external_id}")

    def get(self, task_id: str) -> Task:
        """The task with this `task_id`."""
        path = f"{EXPAND_PATH}/{quote(task_id, safe='')}"
        tasks = tasks_in(self._transport.retried(functools.partial(self._get, path)))
        matching = [task for task in tasks if task.task_id == task_id]
        if matching:
            return matching[0]
        if len(tasks) == 1:
            return tasks[0]
        raise NotFoundError(f"no task {task_id} in the answer")

    def get_by_external_id(self, external_task_id: str) -> Task:
        """The task created with this `external_task_id`.

        Tries the path form first, then the query-string form, and remembers which one the
        server answered for the next calls.
        """

        def lookup() -> Task:
            task = self._find_by_external_id(external_task_id)
            if task is None:
                raise NotFoundError(f"no task with external_task_id {external_task_id}")
            return task

        return self._transport.retried(lookup)

    def list(self, page_size: int = 30) -> Iterator[Task]:
        """Every task, newest first, walking the pages until a short or empty one."""
        low, high = limits.PAGE_SIZE_RANGE
        if not low <= page_size <= high:
            raise ValueError(f"page_size {page_size} is outside {low}..{high}")
        seen: set[str] = set()
        first_page, last_page = limits.PAGE_NUM_RANGE
        for page in range(first_page, last_page + 1):
            params = {"pageNum": page, "pageSize": page_size}
            fetch = functools.partial(self._get, EXPAND_PATH, params)
            tasks = tasks_in(self._transport.retried(fetch))
            for task in tasks:
                # Tasks created while walking shift the pages; do not yield one twice.
                if task.task_id not in seen:
                    seen.add(task.task_id)
                    yield task
            if len(tasks) < page_size:
                return

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._transport.request("GET", path, params=params)

    def _post_create(self, body: dict[str, Any], external_id: str) -> Task:
        """Post the create once; on 1200/1201, return the task if it already exists."""
        try:
            data = self._transport.request("POST", EXPAND_PATH, body=body)
        except InvalidRequestError:
            existing = self._find_by_external_id(external_id)
            if existing is None:
                raise
            log.info("create %s: the external_task_id is taken by the same task", external_id)
            return existing
        tasks = tasks_in(data)
        if len(tasks) != 1:
            # Accepted (code 0) but unreadable: the task may exist, so look it up on the retry.
            raise ProtocolError(
                f"create answered {len(tasks)} tasks instead of one", retryable=True
            )
        return tasks[0]

    def _find_by_external_id(self, external_id: str) -> Task | None:
        """One lookup by external_task_id (no retries); None when the task does not exist."""
        forms = [self._external_id_form] if self._external_id_form else ["path", "query"]
        for form in forms:
            try:
                task = self._query_external_id(form, external_id)
            except (NotFoundError, InvalidRequestError):
                continue
            if self._external_id_form != form:
                log.debug("the server answers queries by external_task_id in %s form", form)
                self._external_id_form = form
            return task
        return None

    def _query_external_id(self, form: str, external_id: str) -> Task:
        if form == "path":
            tasks = tasks_in(self._get(f"{EXPAND_PATH}/{quote(external_id, safe='')}"))
            # A server that does not echo task_info still answered for this id.
            if len(tasks) == 1 and tasks[0].external_task_id is None:
                return tasks[0]
        else:
            tasks = tasks_in(self._get(EXPAND_PATH, {"external_task_id": external_id}))
        # A server that ignores the query parameter answers a page of other tasks: filter.
        for task in tasks:
            if task.external_task_id == external_id:
                return task
        raise NotFoundError(f"no task with external_task_id {external_id}")


def _image_identity(image: bytes | str) -> bytes:
    """The bytes that identify an image: the file for bytes or base64, the URL for a URL."""
    if isinstance(image, bytes):
        return b"bytes:" + image
    if image.startswith(("http://", "https://")):
        return b"url:" + image.encode("utf-8")
    try:
        return b"bytes:" + base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        return b"text:" + image.encode("utf-8")


def _is_ambiguous(error: KlingError) -> bool:
    """True when a create that failed this way may nevertheless have been accepted."""
    if isinstance(error, TransportError):
        return error.maybe_sent
    return isinstance(error, ProtocolError | ServerError)


def _describe_image(image: str) -> str:
    if image.startswith(("http://", "https://")):
        return f"URL on {urlsplit(image).hostname}"
    return f"base64, {len(image)} chars"
