"""The baseline: how today's public Kling clients work, one task at a time.

Create a task, poll it every second until it ends, download its images, then the next one.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from kling_expand_plugin import Credentials, ExpandRequest, KlingClient, Ratios

POLL_EVERY = 1.0
RATIOS_4_3_TO_16_9 = Ratios(up=0.0, down=0.0, left=0.1667, right=0.1667)


@dataclass(frozen=True)
class Finished:
    """One baseline task: when the server finished it and when the client had its images."""

    finished_at: float
    """Unix seconds, the server's updated_at of the final status."""
    done_at: float
    """Unix seconds, once the images were downloaded."""
    polls: int


def run_baseline(url: str, pictures: list[bytes]) -> list[Finished]:
    """Expand each 4:3 picture to 16:9, one task at a time, polling every second."""
    finished = []
    with KlingClient(url, Credentials.from_env()) as client:
        for data in pictures:
            request = ExpandRequest(base64.b64encode(data).decode(), RATIOS_4_3_TO_16_9)
            task = client.create(request)
            polls = 0
            while not task.finished:
                time.sleep(POLL_EVERY)
                task = client.get(task.task_id)
                polls += 1
            for image in task.images:
                client.download(image.url)
            assert task.updated_at is not None
            finished.append(Finished(task.updated_at / 1000, time.time(), polls))
    return finished
