"""Downloads: http(s) only, streamed, capped, retried, checked to be images."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling.client import ExpandRequest
from kling_expand_plugin.kling.errors import DownloadError

from .conftest import FAST_POLL, png_bytes
from .scripted import Answer, scripted_server, sequence

PNG = png_bytes(64, 48)


def finished_task(local_server, make_client, image_b64, **server_settings):
    server = local_server(**server_settings)
    client = make_client(server.url)
    task = client.create(ExpandRequest(image=image_b64, ratios=Ratios(0.1, 0.1, 0.2, 0.2)))
    return server, client, client.wait(task, schedule=FAST_POLL, timeout=10)


def test_download_to_a_file(local_server, make_client, image_b64, tmp_path):
    _server, client, task = finished_task(local_server, make_client, image_b64)
    dest = tmp_path / "out" / "result.png"
    assert client.download(task.images[0].url, dest=dest) == dest
    assert dest.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in dest.parent.iterdir()] == ["result.png"]


def test_download_into_a_file_streams_and_replaces_what_a_failed_try_wrote(make_client, tmp_path):
    noise = np.random.default_rng(5).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG", compress_level=0)
    big = buffer.getvalue()  # about 5.8 MB
    answers = sequence(Answer(200, big, cut_at=100_000), Answer(200, big))
    with scripted_server(answers) as (url, server), open(tmp_path / "r.png", "w+b") as sink:
        sink.write(b"left over" * 1_000_000)  # longer than the image: must be cut off
        tracemalloc.start()
        try:
            make_client(url).download_into(url + "/r.png", sink)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (tmp_path / "r.png").read_bytes() == big  # the cut try and the old bytes are gone
    assert len(server.seen) == 2
    assert peak < len(big) // 4  # streamed through: never held whole


def test_cut_off_download_is_retried(local_server, make_client, image_b64):
    server, client, task = finished_task(
        local_server, make_client, image_b64, faults={"broken-download": 0.5}, seed=1
    )
    for _ in range(4):
        assert client.download(task.images[0].url).startswith(b"\x89PNG")
    assert server.stats()["faults_fired"]["broken-download"] > 0


def test_always_cut_off_download_fails_and_leaves_no_file(
    local_server, make_client, image_b64, tmp_path
):
    server, client, task = finished_task(
        local_server, make_client, image_b64, faults={"broken-download": 1.0}
    )
    with pytest.raises(DownloadError, match=r"IncompleteRead|ChunkedEncoding|cut off") as caught:
        client.download(task.images[0].url, dest=tmp_path / "r.png")
    assert caught.value.retryable
    assert list(tmp_path.iterdir()) == []
    assert server.stats()["requests"]["results"] == 6  # every attempt of the policy


def test_too_large_is_refused_without_retrying(local_server, make_client, image_b64):
    server, client, task = finished_task(local_server, make_client, image_b64)
    with pytest.raises(DownloadError, match="cap") as caught:
        client.download(task.images[0].url, max_bytes=1000)
    assert not caught.value.retryable
    assert server.stats()["requests"]["results"] == 1


def test_too_large_without_content_length(make_client):
    with scripted_server(sequence(Answer(200, PNG, send_length=False))) as (url, server):
        client = make_client(url)
        with pytest.raises(DownloadError, match="cap"):
            client.download(url + "/r.png", max_bytes=100)
        assert client.download(url + "/r.png") == PNG
    assert len(server.seen) == 2


def test_not_an_image(make_client):
    not_image = sequence(Answer(200, b"<html>oops</html>"))
    with (
        scripted_server(not_image) as (url, server),
        pytest.raises(DownloadError, match="not a readable image"),
    ):
        make_client(url).download(url + "/r.png")
    assert len(server.seen) == 6


def test_http_errors_and_retries(make_client):
    with scripted_server(sequence(Answer(503), Answer(200, PNG))) as (url, server):
        assert make_client(url).download(url + "/r.png?sig=abc") == PNG
    assert "Authorization" not in server.seen[0].headers
    with (
        scripted_server(sequence(Answer(403))) as (url, server),
        pytest.raises(DownloadError, match="HTTP 403") as caught,
    ):
        make_client(url).download(url + "/r.png?X-Signature=topsecret")
    assert len(server.seen) == 1
    assert "topsecret" not in str(caught.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/x.png", "/local/path.png"])
def test_only_http_urls(make_client, url):
    with pytest.raises(DownloadError, match=r"http\(s\) only"):
        make_client("http://127.0.0.1:9").download(url)


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_a_stored_result_cut_short_is_not_taken_as_whole(format):
    from kling_expand_plugin.batch.taskrunner import _intact

    buffer = io.BytesIO()
    Image.effect_noise((640, 480), 64).convert("RGB").save(buffer, format)
    whole = buffer.getvalue()
    assert _intact(whole)
    assert not _intact(whole[: len(whole) // 2])  # a crash or a full disk cut it
