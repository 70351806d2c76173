"""aiortc as a second, independent TURN client of the Switchboard relay.

Two RTCPeerConnections in one process, relay-only, our server as the only ICE
server; a DataChannel message goes each way. Run by tests/interop/run.sh.
"""

import asyncio
import base64
import hashlib
import hmac
import os
import sys
import time

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

# Stock aioice skips loopback host addresses; the relay listens on 127.0.0.1.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

SERVER = os.environ.get("RELAY_ADDR", "127.0.0.1:3478")
SECRET = os.environ["RELAY_SECRET"]
DEADLINE_S = 20


def credentials(user: str, secret: str = SECRET) -> tuple[str, str]:
    username = f"{int(time.time()) + 3600}:{user}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


def make_pc(user: str, secret: str = SECRET) -> RTCPeerConnection:
    username, credential = credentials(user, secret)
    server = RTCIceServer(urls=[f"turn:{SERVER}?transport=udp"], username=username, credential=credential)
    return RTCPeerConnection(RTCConfiguration(iceServers=[server], iceTransportPolicy=RTCIceTransportPolicy.RELAY))


async def datachannel_through_relay() -> None:
    a, b = make_pc("aiortc-a"), make_pc("aiortc-b")
    got_b: asyncio.Queue = asyncio.Queue()
    got_a: asyncio.Queue = asyncio.Queue()
    channel = a.createDataChannel("interop")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    channel.on("message", got_a.put_nowait)

    @b.on("datachannel")
    def on_datachannel(ch):
        @ch.on("message")
        def on_message(msg):
            got_b.put_nowait(msg)
            ch.send(f"pong:{msg}")

    await a.setLocalDescription(await a.createOffer())
    offer = a.localDescription
    assert " typ relay " in offer.sdp, "offer has relay candidates"
    assert " typ host " not in offer.sdp, "relay-only offers no host candidates"
    await b.setRemoteDescription(offer)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await asyncio.wait_for(opened.wait(), DEADLINE_S)
    channel.send("ping from aiortc")
    assert await asyncio.wait_for(got_b.get(), DEADLINE_S) == "ping from aiortc"
    assert await asyncio.wait_for(got_a.get(), DEADLINE_S) == "pong:ping from aiortc"
    await a.close()
    await b.close()


async def wrong_secret_gets_no_relay_candidate() -> None:
    pc = make_pc("mallory", secret="not-the-secret")
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    assert " typ relay " not in pc.localDescription.sdp, "a wrong credential must not allocate"
    await pc.close()


async def main() -> int:
    tests = [datachannel_through_relay, wrong_secret_gets_no_relay_candidate]
    passed = failed = 0
    for t in tests:
        try:
            await asyncio.wait_for(t(), DEADLINE_S * 2)
            print(f"ok - {t.__name__}")
            passed += 1
        except Exception as e:  # report every failure, then fail the run
            print(f"not ok - {t.__name__}: {e!r}")
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
