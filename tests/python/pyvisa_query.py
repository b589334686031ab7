"""pyvisa-py talking to a labmesh simulator over VXI-11 or HiSLIP.

Usage: pyvisa_query.py RESOURCE
Prints one JSON line: the *IDN? answer, the voltage read back after a set,
the SYST:ERR? answer after an out-of-range set, a query after a device
clear, a query under an exclusive lock (where this pyvisa-py can lock),
and the status byte.
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
    try:
        inst.lock_excl(timeout=1000)
    except pyvisa.errors.VisaIOError as e:
        # pyvisa-py 0.8 has no lock for HiSLIP sessions (newer ones do).
        if e.error_code != pyvisa.constants.StatusCode.error_nonsupported_operation:
            raise
        out["lock"] = "unsupported by this pyvisa-py"
    else:
        out["lock"] = "ok"
        out["locked_idn"] = inst.query("*IDN?")
        inst.unlock()
    out["stb"] = inst.read_stb()
    inst.close()
    rm.close()
    print(json.dumps(out))


main()
