"""The ElevenLabs stand-in's conversation socket keeps the protocol's rules (the browser test relies on
them: a stand-in that accepted anything would prove nothing about the SDK), checked with a raw client."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from elevenlabs_agent.sim.elevenlabs import FakeElevenLabs
from elevenlabs_agent.sim.server import LocalServer

INITIATION = {
    "type": "conversation_initiation_client_data",
    "source_info": {"source": "js_sdk", "version": "9.9.9"},
}


@pytest.fixture
async def standin() -> AsyncIterator[tuple[FakeElevenLabs, LocalServer]]:
    fake = FakeElevenLabs(require_initiation=True, ping_interval=0.05)
    async with LocalServer(fake.app()) as server:
        fake.base_ws_url = server.ws_url
        yield fake, server


async def signed_url(fake: FakeElevenLabs, server: LocalServer) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{server.url}/v1/convai/conversation/get-signed-url",
            params={"agent_id": "agent_x"},
            headers={"xi-api-key": fake.api_key},
        )
    url: str = response.json()["signed_url"]
    return url


async def test_a_conversation_as_the_sdk_holds_it(standin: tuple[FakeElevenLabs, LocalServer]) -> None:
    fake, server = standin
    url = await signed_url(fake, server)
    async with websockets.connect(url + "&source=js_sdk&version=9.9.9", subprotocols=["convai"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "convai"
        await ws.send(orjson.dumps(INITIATION).decode())
        hello = orjson.loads(await ws.recv())
        assert hello["type"] == "conversation_initiation_metadata"
        event = hello["conversation_initiation_metadata_event"]
        assert event["agent_output_audio_format"] == event["user_input_audio_format"] == "pcm_16000"
        conversation = fake.conversations[event["conversation_id"]]
        await ws.send(orjson.dumps({"type": "contextual_update", "text": "ctx", "context_id": "t1"}).decode())
        await ws.send(orjson.dumps({"user_audio_chunk": base64.b64encode(b"\0" * 320).decode()}).decode())
        await ws.send(orjson.dumps({"type": "user_message", "text": "hello"}).decode())
        pongs, answers = 0, list[str]()
        async with asyncio.timeout(5):
            while pongs < 2 or not answers:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "ping":
                    await ws.send(orjson.dumps({"type": "pong", "event_id": frame["ping_event"]["event_id"]}).decode())
                    pongs += 1
                elif frame["type"] == "agent_response":
                    answers.append(frame["agent_response_event"]["agent_response"])
        assert answers == ["You said: hello"]
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)
    assert conversation.protocol_errors == []
    assert conversation.sdk == ("js_sdk", "9.9.9") and conversation.query["source"] == "js_sdk"
    assert conversation.contextual_updates == [{"type": "contextual_update", "text": "ctx", "context_id": "t1"}]
    assert conversation.user_messages == [{"type": "user_message", "text": "hello"}]
    assert (conversation.audio_chunks, conversation.audio_bytes) == (1, 320)
    assert len(conversation.pongs) >= 2 and not conversation.open
    assert len(conversation.frame_times) == len(conversation.frames)


async def test_a_signature_it_did_not_issue_is_refused(standin: tuple[FakeElevenLabs, LocalServer]) -> None:
    fake, server = standin
    url = await signed_url(fake, server)
    forged = url.rsplit("=", 1)[0] + "=forged"
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(forged, subprotocols=["convai"])  # type: ignore[list-item]
    assert refused.value.response.status_code == 403
    assert fake.refused_handshakes == 1 and fake.conversation_opens == 0


@pytest.mark.parametrize(
    ("first", "error"),
    [
        ({"type": "user_message", "text": "too early"}, "first frame is not the initiation"),
        ("not json", "not JSON"),
    ],
)
async def test_the_initiation_must_come_first(
    standin: tuple[FakeElevenLabs, LocalServer], first: object, error: str
) -> None:
    fake, server = standin
    async with websockets.connect(await signed_url(fake, server), subprotocols=["convai"]) as ws:  # type: ignore[list-item]
        await ws.send(first if isinstance(first, str) else orjson.dumps(first).decode())
        with pytest.raises(ConnectionClosed):
            while True:
                assert orjson.loads(await ws.recv())["type"] != "conversation_initiation_metadata"
    assert ws.close_code == 1008
    [conversation] = fake.conversations.values()
    assert any(error in e for e in conversation.protocol_errors), conversation.protocol_errors


async def test_frames_outside_the_contract_are_listed(standin: tuple[FakeElevenLabs, LocalServer]) -> None:
    fake, server = standin
    async with websockets.connect(await signed_url(fake, server), subprotocols=["convai"]) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps(INITIATION).decode())
        await ws.recv()
        for frame in (
            {"type": "contextual_updat", "text": "x"},
            {"type": "contextual_update"},
            {"type": "pong", "event_id": 999},
            {"user_audio_chunk": "not base64!"},
            INITIATION,
        ):
            await ws.send(orjson.dumps(frame).decode())
    [conversation] = fake.conversations.values()
    # The stand-in records one error per frame; the last one sent (a second initiation) is the barrier.
    async with asyncio.timeout(5):
        while not conversation.protocol_errors or not conversation.protocol_errors[-1].startswith("a second"):
            await asyncio.sleep(0.005)
    assert [e.split(":")[0] for e in conversation.protocol_errors] == [
        "unknown frame type",
        "contextual_update without text",
        "pong for no ping we sent",
        "user_audio_chunk is not base64",
        "a second initiation",
    ]
