"""Run the Python labmesh DataBank for the bank interop test.

usage: bank_py_server.py INGEST_BIND RETRIEVE_BIND DATA_DIR BROKER_RPC BROKER_XSUB BANK_ID
Serves until killed.
"""
import asyncio
import sys

from labmesh.databank import DataBank


async def main() -> None:
    ingest, retrieve, data_dir, rpc, xsub, bank_id = sys.argv[1:7]
    bank = DataBank(ingest_bind=ingest, retrieve_bind=retrieve, data_dir=data_dir,
                    broker_rpc=rpc, broker_xsub=xsub, bank_id=bank_id, heartbeat_sec=1)
    await bank.serve()


asyncio.run(main())
