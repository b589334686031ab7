"""Python labmesh RelayClient calling the generic `scpi` driver on a Rust relay.

Usage: scpi_query.py BROKER_RPC BROKER_XPUB RELAY_ID
"""
import asyncio
import json
import sys

from labmesh import DirectorClientAgent


async def main():
    rpc, xpub, relay_id = sys.argv[1], sys.argv[2], sys.argv[3]
    client = DirectorClientAgent(broker_address="127.0.0.1", broker_rpc=rpc, broker_xpub=xpub)
    await client.connect()
    inst = await client.get_relay_agent(relay_id)
    out = {
        "idn": await inst.call("query", {"cmd": "*IDN?"}),
        "write": await inst.write(cmd="VOLT 2.5"),
        "volt": await inst.query(cmd="VOLT?"),
    }
    print(json.dumps(out))


asyncio.run(main())
