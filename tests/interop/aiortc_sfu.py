"""aiortc as a second, non-browser client of the relay's SFU.

Two aiortc peers of one room each POST their offer to /v1/sessions (bearer token signed here
with the shared secret, as the Worker does) and exchange DataChannel messages through the relay:
plain on `chat`, and addressed with the envelope on a `switchboard-envelope` channel.
Run by tests/interop/run.sh inside a loopback-only namespace.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.request

import aioice.ice
from aiortc import RTCPeerConnection, RTCSessionDescription

# Stock aioice skips loopback host addresses; everything here is on 127.0.0.1.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

API = os.environ.get("SFU_API", "http://127.0.0.1:9478")
SECRET = os.environ["RELAY_SECRET"]
DEADLINE_S = 20


def sfu_token(room: str, peer_id: str) -> str:
    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    claims = json.dumps({"room": room, "peer_id": peer_id, "exp": int(time.time()) + 600})
    signed = "sfu1." + b64(claims.encode())
    sig = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{b64(sig)}"


def post_offer(sdp: str, token: str) -> str:
    req = urllib.request.Request(
        f"{API}/v1/sessions",
        data=sdp.encode(),
        method="POST",
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as res:
        assert res.status == 201, res.status
        assert res.headers["Location"].startswith("/v1/sessions/")
        return res.read().decode()


async def join(peer_id: str):
    pc = RTCPeerConnection()
    inbox: asyncio.Queue = asyncio.Queue()
    chat = pc.createDataChannel("chat")
    env = pc.createDataChannel("data", protocol="switchboard-envelope")
    chat.on("message", lambda m: inbox.put_nowait(("chat", m)))
    env.on("message", lambda m: inbox.put_nowait(("data", m)))
    opened = asyncio.gather(*(wait_open(c) for c in (chat, env)))
    await pc.setLocalDescription(await pc.createOffer())
    answer = await asyncio.to_thread(post_offer, pc.localDescription.sdp, sfu_token("aiortc-room", peer_id))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await opened
    return pc, chat, env, inbox


async def wait_open(channel) -> None:
    if channel.readyState == "open":
        return
    done = asyncio.get_running_loop().create_future()
    channel.on("open", lambda: done.done() or done.set_result(None))
    await done


async def main() -> None:
    a, a_chat, a_env, _a_inbox = await join("alice")
    b, _b_chat, _b_env, b_inbox = await join("bob")
    try:
        a_chat.send("hello from aiortc")
        a_chat.send(b"\x00\x01binary")
        a_env.send("bob\nfor bob")
        got = [await b_inbox.get() for _ in range(3)]
        assert got[0] == ("chat", "hello from aiortc"), got
        assert got[1] == ("chat", b"\x00\x01binary"), got
        # The relay rewrote the envelope header to name the sender.
        assert got[2] == ("data", "alice\nfor bob"), got
    finally:
        await a.close()
        await b.close()


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), DEADLINE_S))
    except Exception as e:  # noqa: BLE001 - report any failure as the test's result
        print(f"aiortc SFU: FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
    print("aiortc SFU: DataChannel messages (plain and enveloped) through the relay: ok")
