"""A CURVE peer in pyzmq with labmesh's variables (issue 12 interop).

labmesh's own CURVE setup assigns str keys to socket options, which pyzmq
rejects (TypeError: unicode not allowed); this script sets the same
variables as bytes, so it shows what labmesh's CURVE means on the wire.

Usage:
  curve_peer.py call ENDPOINT METHOD PARAMS_JSON
      DEALER to a Rust relay; client keys from ZMQ_CLIENT_PUBLICKEY,
      ZMQ_CLIENT_SECRETKEY, ZMQ_SERVER_PUBLICKEY. Prints the reply JSON.
  curve_peer.py serve PORT
      ROUTER with ZMQ_SERVER_SECRETKEY; prints "ready", answers one rpc
      with {"echo": method} and prints {"served": method}.
"""
import json
import os
import sys

import zmq


def key(name):
    return os.environ[name].encode()


def main():
    ctx = zmq.Context()
    if sys.argv[1] == "call":
        ep, method, params = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        s = ctx.socket(zmq.DEALER)
        s.curve_secretkey = key("ZMQ_CLIENT_SECRETKEY")
        s.curve_publickey = key("ZMQ_CLIENT_PUBLICKEY")
        s.curve_serverkey = key("ZMQ_SERVER_PUBLICKEY")
        # Bounded, but long enough for a loaded CI machine (the Rust test
        # bounds the whole run at 15 s); 5 s timed out once under load.
        s.rcvtimeo = int(os.environ.get("CURVE_PEER_TIMEOUT_MS", "12000"))
        s.linger = 0
        s.connect(ep)
        s.send(json.dumps({"type": "rpc", "rpc_uuid": "py-curve", "method": method, "params": params}).encode())
        print(s.recv().decode())
    else:
        s = ctx.socket(zmq.ROUTER)
        s.curve_secretkey = key("ZMQ_SERVER_SECRETKEY")
        s.curve_publickey = key("ZMQ_SERVER_PUBLICKEY")
        s.curve_server = True
        s.linger = 0
        s.bind("tcp://127.0.0.1:%s" % sys.argv[2])
        print("ready", flush=True)
        ident, body = s.recv_multipart()
        req = json.loads(body)
        s.send_multipart([ident, json.dumps({"type": "rpc_result", "rpc_uuid": req["rpc_uuid"], "result": {"echo": req["method"]}}).encode()])
        print(json.dumps({"served": req["method"]}), flush=True)
        # Let the reply leave before the socket closes.
        s.linger = 1000
    ctx.destroy(linger=1000)


if __name__ == "__main__":
    main()
