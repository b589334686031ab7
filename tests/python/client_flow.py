"""Python labmesh client against a Rust broker and relay.

Usage: client_flow.py BROKER_RPC BROKER_XPUB RELAY_ID
Prints one JSON line with what it saw.
"""
import asyncio
import json
import sys

from labmesh import DirectorClientAgent


async def main():
    rpc, xpub, relay_id = sys.argv[1], sys.argv[2], sys.argv[3]
    client = DirectorClientAgent(broker_address="127.0.0.1", broker_rpc=rpc, broker_xpub=xpub)
    await client.connect()
    states = []
    got_25 = asyncio.Event()

    def on_state(rid, st):
        states.append({"rid": rid, "state": st})
        if rid == relay_id and st.get("voltage") == 2.5:
            got_25.set()

    client.on_state(on_state)
    relays = await client.list_relay_ids()
    banks = await client.list_banks()
    ping = await client._rpc("ping")
    psu = await client.get_relay_agent(relay_id)
    set_v = await psu.set_voltage(value=2.5)
    state = await psu.get_state()
    positional = await psu.call("set_output", [True])
    try:
        await psu.call("no_such_method", {})
        unknown = None
    except RuntimeError as e:
        unknown = str(e)
    await asyncio.wait_for(got_25.wait(), timeout=10)
    print(json.dumps({
        "relays": relays, "banks": banks, "ping": ping, "set_voltage": set_v,
        "state": state, "positional": positional, "unknown": unknown,
        "on_state": [s for s in states if s["rid"] == relay_id][-1],
    }))


asyncio.run(main())
