"""pyvisa-py talking to a labmesh simulator over VXI-11 or HiSLIP.

Usage: pyvisa_query.py RESOURCE
Prints one JSON line: the *IDN? answer, the voltage read back after a set,
the SYST:ERR? answer after an out-of-range set, and a device clear's result.
"""
import json
import sys

import pyvisa


def main():
    resource = sys.argv[1]
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(resource, open_timeout=5000)
    inst.timeout = 5000
    inst.read_termination = "\n"
    inst.write_termination = "\n"
    out = {"idn": inst.query("*IDN?")}
    inst.write("VOLT 2.5")
    out["volt"] = inst.query("VOLT?")
    inst.write("VOLT 99")
    out["err"] = inst.query("SYST:ERR?")
    inst.clear()
    out["after_clear"] = inst.query("*OPC?")
    inst.close()
    rm.close()
    print(json.dumps(out))


main()
