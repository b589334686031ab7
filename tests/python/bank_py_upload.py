"""Python labmesh client side of the bank interop test.

usage: bank_py_upload.py INGEST RETRIEVE SRC_FILE DATASET_ID OUT_FILE

1. uploads SRC_FILE with labmesh.relay.upload_dataset and prints "UPLOADED <id>";
2. waits for a line on stdin (the test has seen the dataset announced);
3. downloads it with labmesh.client.BankClient.download to OUT_FILE and
   prints the result dict as one JSON line.
"""
import asyncio
import json
import sys

from labmesh.client import BankClient
from labmesh.relay import upload_dataset


async def main() -> None:
    ingest, retrieve, src, dataset_id, out = sys.argv[1:6]
    with open(src, "rb") as f:
        data = f.read()
    did = await upload_dataset(ingest, data, dataset_id=dataset_id,
                               relay_id="py-relay", meta={"origin": "python"})
    print("UPLOADED", did, flush=True)
    sys.stdin.readline()
    bank = BankClient(retrieve)
    await bank.connect()
    res = await bank.download(dataset_id, out, timeout=30.0)
    print(json.dumps(res), flush=True)


asyncio.run(main())
