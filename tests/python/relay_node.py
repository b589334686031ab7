"""A Python labmesh RelayAgent hosting the README's MockPSU.

Usage: relay_node.py BROKER_RPC BROKER_XSUB RELAY_ID RPC_PORT
Runs until killed.
"""
import asyncio
import random
import sys
import time

from labmesh import RelayAgent


class MockPSU:
    def __init__(self, relay_id):
        self.rid = relay_id
        self.voltage = 0.0
        self.current = 0.0
        self.output = False
        self.last_updated = time.time()
        self._count = 0

    def set_voltage(self, value):
        self.voltage = float(value)
        self.last_updated = time.time()
        return {"ok": True, "voltage": self.voltage}

    def set_output(self, on):
        self.output = bool(on)
        self.last_updated = time.time()
        return {"ok": True, "output": self.output}

    def get_state(self):
        return {"relay_id": self.rid, "voltage": self.voltage, "current": self.current,
                "output": self.output, "last_updated": self.last_updated, "runs": self._count}

    def poll(self):
        self.current = round(self.voltage * (0.9 + 0.2 * random.random()), 4)
        return self.get_state()


async def main():
    rpc, xsub, relay_id, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    agent = RelayAgent(relay_id, MockPSU(relay_id), broker_rpc=rpc, rpc_bind=f"tcp://*:{port}",
                       state_pub=xsub, local_address="127.0.0.1", broker_address="127.0.0.1",
                       state_interval=0.2)
    print("ready", flush=True)
    await agent.run()


asyncio.run(main())
