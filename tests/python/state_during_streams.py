"""Python labmesh client watching state while a Rust relay streams.

Usage: state_during_streams.py BROKER_RPC BROKER_XPUB RELAY_ID SECONDS
Counts the state messages of RELAY_ID for SECONDS, calls get_state, and
prints one JSON line. Python labmesh subscribes to `state.`/`dataset.` and
expects two frames per message: a stream message reaching it would break
its listener (and the count).
"""
import asyncio
import json
import sys

from labmesh import DirectorClientAgent


async def main():
    rpc, xpub, relay_id, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = DirectorClientAgent(broker_address="127.0.0.1", broker_rpc=rpc, broker_xpub=xpub)
    await client.connect()
    seen = {"states": 0, "other": [], "keys": set()}

    def on_state(rid, st):
        if rid == relay_id:
            seen["states"] += 1
            seen["keys"].update(st.keys())
        else:
            seen["other"].append(rid)

    client.on_state(on_state)
    await asyncio.sleep(seconds)
    psu = await client.get_relay_agent(relay_id)
    state = await psu.get_state()
    print(json.dumps({
        "states": seen["states"], "other": seen["other"][:10],
        "keys": sorted(seen["keys"]), "get_state": state,
    }))


asyncio.run(main())
