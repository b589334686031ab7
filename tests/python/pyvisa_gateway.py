"""pyvisa-py talking to an instrument behind a labmesh relay's LAN gateway.

Usage: pyvisa_gateway.py drive RESOURCE VOLTS
         *IDN?, VOLT <VOLTS> then VOLT? (channel 1), an out-of-range VOLT then
         SYST:ERR?, and (INSTR resources) an exclusive lock around a
         query and the status byte. Prints one JSON line.
       pyvisa_gateway.py locked RESOURCE
         A write and a query while someone else holds the instrument:
         prints the VISA error of each as JSON.
"""
import json
import sys

import pyvisa


def open_inst(rm, resource, timeout):
    inst = rm.open_resource(resource, open_timeout=5000)
    inst.timeout = timeout
    inst.read_termination = "\n"
    inst.write_termination = "\n"
    return inst


def drive(rm, resource, volts):
    inst = open_inst(rm, resource, 5000)
    out = {"idn": inst.query("*IDN?")}
    # Channel 1 named in the same message: the relay's polls select
    # channels between LAN messages, as they would on the bench.
    inst.write(f"INST:NSEL 1;:VOLT {volts}")
    out["volt"] = inst.query("INST:NSEL 1;:VOLT?")
    inst.write("VOLT 99")
    out["err"] = inst.query("SYST:ERR?")
    if resource.endswith("::INSTR"):
        try:
            inst.lock_excl(timeout=1000)
        except pyvisa.errors.VisaIOError as e:
            # pyvisa-py 0.8 has no lock for HiSLIP sessions.
            if e.error_code != pyvisa.constants.StatusCode.error_nonsupported_operation:
                raise
            out["lock"] = "unsupported by this pyvisa-py"
        else:
            out["lock"] = "ok"
            out["locked_volt"] = inst.query("INST:NSEL 1;:VOLT?")
            inst.unlock()
        out["stb"] = inst.read_stb()
    inst.close()
    return out


def attempt(f):
    try:
        return {"ok": f()}
    except pyvisa.errors.VisaIOError as e:
        return {"error": str(e), "code": int(e.error_code)}
    except Exception as e:  # a protocol error pyvisa-py does not map
        return {"error": f"{type(e).__name__}: {e}"}


def locked(rm, resource):
    inst = open_inst(rm, resource, 1500)
    out = {
        "write": attempt(lambda: inst.write("INST:NSEL 1;:VOLT 1.5")),
        "query": attempt(lambda: inst.query("INST:NSEL 1;:VOLT?")),
    }
    inst.close()
    return out


def main():
    mode, resource = sys.argv[1], sys.argv[2]
    rm = pyvisa.ResourceManager("@py")
    if mode == "drive":
        out = drive(rm, resource, sys.argv[3])
    else:
        out = locked(rm, resource)
    rm.close()
    print(json.dumps(out))


main()
