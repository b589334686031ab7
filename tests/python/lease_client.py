"""Python labmesh client against a Rust relay whose instrument is leased.

The PyPI client holds no lease token: its state-changing call must fail
with 409 naming the holder, its read-only call must work, and lease events
(`lock.<relay_id>`) must never reach its state subscription.
Usage: lease_client.py BROKER_RPC BROKER_XPUB RELAY_ID
Prints "ready" once subscribed and called, waits for one line on stdin
(the Rust side changes the lease meanwhile), then prints one JSON line.
"""
import asyncio
import json
import sys

from labmesh import DirectorClientAgent


async def main():
    rpc, xpub, relay_id = sys.argv[1], sys.argv[2], sys.argv[3]
    client = DirectorClientAgent(broker_address="127.0.0.1", broker_rpc=rpc, broker_xpub=xpub)
    await client.connect()
    seen = {"states": 0, "other": []}

    def on_state(rid, st):
        if rid == relay_id and isinstance(st, dict) and "voltage" in st:
            seen["states"] += 1
        else:
            seen["other"].append([rid, st])

    client.on_state(on_state)
    psu = await client.get_relay_agent(relay_id)
    try:
        await psu.set_voltage(value=9.0)
        set_v = None
    except RuntimeError as e:
        set_v = str(e)
    state = await psu.get_state()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    before = seen["states"]
    for _ in range(100):
        if seen["states"] >= before + 3:
            break
        await asyncio.sleep(0.05)
    print(json.dumps({"set_voltage": set_v, "state": state,
                      "states": seen["states"], "other": seen["other"]}), flush=True)


asyncio.run(main())
