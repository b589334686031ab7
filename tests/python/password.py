"""The network password as newer upstream labmesh sends it, against Rust nodes.

labmesh 0.0.0.dev0 on PyPI has no password support, so this speaks the
upstream wire form directly with pyzmq: a "password" field in hello and rpc.
Usage: password.py BROKER_RPC RELAY_ID GOOD_PASSWORD
"""
import asyncio
import json
import sys
import uuid

import zmq
import zmq.asyncio

from labmesh import DirectorClientAgent


def dumps(o):
    return json.dumps(o, separators=(",", ":")).encode()


async def req(sock, msg):
    await sock.send(dumps(msg))
    return json.loads(await asyncio.wait_for(sock.recv(), timeout=5))


async def main():
    rpc, relay_id, good = sys.argv[1], sys.argv[2], sys.argv[3]
    ctx = zmq.asyncio.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.connect(rpc)
    out = {}
    out["hello_good"] = await req(s, {"type": "hello", "role": "client", "password": good})
    out["hello_bad"] = await req(s, {"type": "hello", "role": "client", "password": "wrong"})
    out["hello_none"] = await req(s, {"type": "hello", "role": "client"})
    out["hello_odd"] = await req(s, {"type": "hello", "role": "client", "password": {"x": [1, None]}})
    u = uuid.uuid4().hex
    lst = await req(s, {"type": "rpc", "rpc_uuid": u, "method": "list_relay_ids", "params": {}, "password": good})
    out["list_good"] = lst
    endpoint = next(r["rpc_endpoint"] for r in lst["result"] if r["relay_id"] == relay_id)
    out["list_bad"] = await req(s, {"type": "rpc", "rpc_uuid": u, "method": "list_relay_ids", "params": {}, "password": "wrong"})
    r = ctx.socket(zmq.DEALER)
    r.connect(endpoint)
    out["call_good"] = await req(r, {"type": "rpc", "rpc_uuid": u, "method": "set_voltage", "params": {"value": 1.5}, "password": good})
    out["call_bad"] = await req(r, {"type": "rpc", "rpc_uuid": u, "method": "set_voltage", "params": {"value": 9}, "password": "\udcff"[0:0] + "x" * 300})
    out["call_number"] = await req(r, {"type": "rpc", "rpc_uuid": u, "method": "get_state", "params": {}, "password": 12345})
    out["state_after"] = await req(r, {"type": "rpc", "rpc_uuid": u, "method": "get_state", "params": {}, "password": good})
    # The PyPI client sends no password: the broker refuses its directory calls.
    client = DirectorClientAgent(broker_address="127.0.0.1", broker_rpc=rpc, broker_xpub="tcp://127.0.0.1:1")
    await client.connect()
    try:
        await client.list_relay_ids()
        out["pypi_client"] = "accepted"
    except RuntimeError as e:
        out["pypi_client"] = str(e)
    print(json.dumps(out))


asyncio.run(main())
