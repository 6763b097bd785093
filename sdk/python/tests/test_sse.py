"""The server-sent events parser, on hand-written streams (no server)."""

from __future__ import annotations

from hearth.sse import ServerSentEvent, SSEDecoder


def parse(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def test_fields_and_blank_line_dispatch() -> None:
    events = parse(b'id: 1\nevent: started\ndata: {"pid":7}\n\nid: 2\nevent: stdout\ndata: x\n\n')
    assert [(e.id, e.event, e.data) for e in events] == [
        ("1", "started", '{"pid":7}'),
        ("2", "stdout", "x"),
    ]


def test_multi_line_data_is_joined_with_newlines() -> None:
    (event,) = parse(b"data: first\ndata:second\ndata:  third\n\n")
    # One space after the colon is dropped, and only one.
    assert event.data == "first\nsecond\n third"
    assert event.event == "message"


def test_comments_and_keep_alives_are_ignored() -> None:
    events = parse(b":\n\n: keep-alive\n\nid: 5\n:comment in the middle\ndata: d\n\n")
    assert [(e.id, e.data) for e in events] == [("5", "d")]


def test_an_event_without_data_is_not_dispatched_but_its_id_sticks() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 9\nevent: nothing\n\n") == []
    assert decoder.last_event_id == "9"
    (event,) = decoder.feed(b"data: later\n\n")
    assert (event.id, event.event) == ("9", "message")


def test_line_endings_crlf_cr_and_lf_even_split_across_chunks() -> None:
    stream = b"id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\rid: 3\ndata: c\n\n"
    whole = parse(stream)
    byte_by_byte = parse(*[stream[i : i + 1] for i in range(len(stream))])
    assert [(e.id, e.data) for e in whole] == [("1", "a"), ("2", "b"), ("3", "c")]
    assert byte_by_byte == whole
    # A CRLF split exactly between chunks is one line ending, not two.
    assert [e.data for e in parse(b"data: x\r", b"\ndata: y\r\n\r\n")] == ["x\ny"]


def test_utf8_split_across_chunks() -> None:
    payload = "data: héllo €\n\n".encode()
    cut = payload.index(b"\xe2") + 1  # inside the euro sign
    (event,) = parse(payload[:cut], payload[cut:])
    assert event.data == "héllo €"


def test_field_without_colon_bom_retry_and_unknown_fields() -> None:
    events = parse(b"\xef\xbb\xbfdata\nretry: 1500\nfoo: bar\nid: a\x00b\n\n")
    assert len(events) == 1
    assert events[0].data == ""  # "data" alone is an empty data line
    assert events[0].retry == 1500
    assert events[0].id is None  # an id containing NUL is ignored


def test_an_unfinished_event_at_the_end_is_dropped() -> None:
    assert parse(b"data: complete\n\ndata: incomplete\n") == [
        ServerSentEvent(event="message", data="complete", id=None, retry=None)
    ]
