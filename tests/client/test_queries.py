"""Queries: by task_id, by external_task_id in both forms, and the list's pages."""

from __future__ import annotations

import pytest

from kling_expand_plugin.imaging.geometry import Ratios
from kling_expand_plugin.kling.client import ExpandRequest
from kling_expand_plugin.kling.errors import NotFoundError, ProtocolError
from kling_expand_plugin.kling.models import Task, TaskStatus
from kling_expand_plugin.kling.wire import task_from_json

from .scripted import Seen, envelope, scripted_server, sequence, task_json

COLLECTION = "/v1/images/editing/expand"


def create_some(client, image_b64: str, count: int) -> list[Task]:
    return [
        client.create(ExpandRequest(image=image_b64, ratios=Ratios(0.1, 0.1, i / 100, 0)))
        for i in range(count)
    ]


def test_get_and_get_by_external_id_on_the_local_server(local_server, make_client, image_b64):
    server = local_server()
    client = make_client(server.url)
    (task,) = create_some(client, image_b64, 1)
    assert client.get(task.task_id).task_id == task.task_id
    assert client.get_by_external_id(task.external_task_id).task_id == task.task_id
    assert client._expansion._external_id_form == "path"
    with pytest.raises(NotFoundError) as caught:
        client.get("no-such-task")
    assert caught.value.code == 1203


def test_falls_back_to_the_query_form_and_remembers_it(make_client):
    def route(seen: Seen):
        if seen.path == COLLECTION and seen.query == "external_task_id=ext-1":
            return envelope(0, [task_json("t1", external="ext-1")])
        return envelope(1203, status=404, message="no such task")

    with scripted_server(route) as (url, server):
        client = make_client(url)
        assert client.get_by_external_id("ext-1").task_id == "t1"
        assert client.get_by_external_id("ext-1").task_id == "t1"
        with pytest.raises(NotFoundError):
            client.get_by_external_id("ext-2")
    forms = [(s.path, s.query) for s in server.seen]
    assert forms == [
        (f"{COLLECTION}/ext-1", ""),
        (COLLECTION, "external_task_id=ext-1"),
        (COLLECTION, "external_task_id=ext-1"),  # remembered: no second path-form try
        (COLLECTION, "external_task_id=ext-2"),
    ]


def test_query_form_that_answers_a_page_is_filtered(make_client):
    """A server that ignores ?external_task_id= answers a page of other tasks."""
    page = [task_json("t1", external="other"), task_json("t2", external="mine")]
    route = sequence(envelope(1203, status=404), envelope(0, page))
    with scripted_server(route) as (url, _server):
        assert make_client(url).get_by_external_id("mine").task_id == "t2"
    route = sequence(envelope(1203, status=404), envelope(0, page[:1]))
    with scripted_server(route) as (url, _server), pytest.raises(NotFoundError):
        make_client(url).get_by_external_id("mine")


def test_path_form_is_remembered(make_client):
    route = sequence(envelope(0, task_json("t1", external="e")))
    with scripted_server(route) as (url, server):
        client = make_client(url)
        client.get_by_external_id("e")
        client.get_by_external_id("e")
    assert [s.query for s in server.seen] == ["", ""]


@pytest.mark.parametrize("shape", ["object", "list"])
@pytest.mark.parametrize("word", ["succeed", "succeeded"])
def test_data_as_object_or_list_and_both_success_words(make_client, shape, word):
    task = task_json(
        "t1", status=word, images=[{"index": 1, "url": "http://x/1.png"}, {"index": 0, "url": "u0"}]
    )
    with scripted_server(sequence(envelope(0, task if shape == "object" else [task]))) as (url, _):
        got = make_client(url).get("t1")
    assert got.status is TaskStatus.SUCCEEDED and got.finished
    assert [image.index for image in got.images] == [0, 1]
    assert got.units == "2" and got.units_value == 2.0


def test_malformed_task_is_a_protocol_error(make_client):
    no_id = sequence(envelope(0, {"task_status": "succeed"}))
    with scripted_server(no_id) as (url, _), pytest.raises(ProtocolError):
        make_client(url).get("t1")
    with pytest.raises(ProtocolError):
        task_from_json({"task_id": "t", "task_status": "exploded"})


def test_list_walks_every_page(local_server, make_client, image_b64):
    server = local_server()
    client = make_client(server.url)
    created = create_some(client, image_b64, 7)
    listed = list(client.list(page_size=3))
    assert [t.task_id for t in listed] == [t.task_id for t in reversed(created)]
    assert server.stats()["requests"]["list"] == 3  # pages of 3, 3 and 1


def test_list_stops_after_a_full_last_page_and_skips_repeats(make_client):
    """Pages of 2, 2 (one repeat: a task created while listing shifted them), then empty."""
    pages = [
        envelope(0, [task_json("t4"), task_json("t3")]),
        envelope(0, [task_json("t3"), task_json("t2")]),
        envelope(0, []),
    ]
    with scripted_server(sequence(*pages)) as (url, server):
        listed = [t.task_id for t in make_client(url).list(page_size=2)]
    assert listed == ["t4", "t3", "t2"]
    assert [s.query for s in server.seen] == [
        "pageNum=1&pageSize=2",
        "pageNum=2&pageSize=2",
        "pageNum=3&pageSize=2",
    ]


def test_list_rejects_a_page_size_outside_the_range(make_client):
    with pytest.raises(ValueError):
        list(make_client("http://127.0.0.1:9").list(page_size=501))
