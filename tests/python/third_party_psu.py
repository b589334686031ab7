"""Open-source third-party PSU drivers from PyPI driving `labmesh sim psu`
through PyVISA (pyvisa-py).

Usage: third_party_psu.py DRIVER RESOURCE
DRIVER: pymeasure-e36312a | qcodes-dp832 | spd3303x
Every step asserts what the instrument's programming guide says the real
supply answers (10 ohm load on every output, the simulator's default);
the last stdout line is a JSON summary the Rust test checks again.
"""
import json
import sys


def close(a, b, tol=1e-3):
    return abs(float(a) - float(b)) <= tol


def pymeasure_e36312a(resource):
    """PyMeasure's KeysightE36312A (pymeasure.instruments.keysight)."""
    from pymeasure.instruments.keysight import KeysightE36312A

    psu = KeysightE36312A(
        resource,
        visa_library="@py",
        read_termination="\n",
        write_termination="\n",
        timeout=5000,
    )
    out = {"idn": psu.id}
    assert psu.id.startswith("Keysight Technologies,E36312A,"), psu.id
    out["options"] = psu.options
    psu.reset()
    psu.clear()
    ch = psu.ch_1
    ch.voltage_setpoint = 5
    ch.current_limit = 0.2
    assert close(ch.voltage_setpoint, 5.0), ch.voltage_setpoint
    assert close(ch.current_limit, 0.2), ch.current_limit
    assert ch.output_enabled is False
    ch.output_enabled = True
    assert ch.output_enabled is True
    # 5 V into 10 ohm wants 0.5 A: limited to 0.2 A, the output sags to 2 V (CC).
    assert close(ch.voltage, 2.0) and close(ch.current, 0.2), (ch.voltage, ch.current)
    oper = int(psu.ask("STAT:OPER:COND? (@1)"))
    assert oper & (1 << 10), oper  # CC
    # CH2 (25 V / 1 A on the E36312A) in CV.
    psu.ch_2.voltage_setpoint = 8
    psu.ch_2.output_enabled = True
    assert close(psu.ch_2.current, 0.8), psu.ch_2.current
    out["ch1"] = [ch.voltage, ch.current]
    # Over-voltage protection (the driver has no property for it: its
    # instrument's own write/ask): trip at 1.5 V, output off, latched.
    psu.write("VOLT:PROT 1.5,(@1)")
    assert int(psu.ask("VOLT:PROT:TRIP? (@1)")) == 1
    assert ch.output_enabled is False
    assert int(psu.ask("STAT:QUES:COND? (@1)")) & 1
    ch.voltage_setpoint = 1
    psu.write("OUTP:PROT:CLE (@1)")
    assert int(psu.ask("VOLT:PROT:TRIP? (@1)")) == 0
    # E36300: clearing restores the output's state from before the trip.
    assert ch.output_enabled is True
    # Errors through the framework's own error check.
    psu.write("VOLT 99, (@1)")
    errors = psu.check_errors()
    codes = [e[0] for e in errors]
    assert codes == [-222], errors
    out["errors"] = errors
    psu.write("*SAV 3")
    psu.reset()
    assert close(ch.voltage_setpoint, 0.0)
    psu.write("*RCL 3")
    assert close(ch.voltage_setpoint, 1.0)
    out["vers"] = psu.ask("SYST:VERS?").strip()
    psu.adapter.close()
    return out


def qcodes_dp832(resource):
    """QCoDeS's RigolDP832 (qcodes.instrument_drivers.rigol)."""
    from qcodes.instrument_drivers.rigol import RigolDP832

    psu = RigolDP832("dp832", resource, visalib="@py", terminator="\n", timeout=5)
    try:
        idn = psu.IDN()
        assert idn["vendor"] == "RIGOL TECHNOLOGIES" and idn["model"] == "DP832", idn
        out = {"idn": idn, "options": psu.installed_options()}
        psu.write("*RST")
        ch = psu.ch1
        ch.set_voltage(5)
        ch.set_current(0.2)
        assert close(ch.set_voltage(), 5.0) and close(ch.set_current(), 0.2)
        assert ch.state() == "OFF"
        ch.state("on")
        assert ch.state() == "ON"
        assert ch.mode() == "ConstantCurrent", ch.mode()
        assert close(ch.voltage(), 2.0) and close(ch.current(), 0.2)
        assert close(ch.power(), 0.4)
        ch.set_current(1)
        assert ch.mode() == "ConstantVoltage", ch.mode()
        out["mode"] = ch.mode()
        # CH3: 5 V / 3 A on the DP832.
        psu.ch3.set_voltage(3.3)
        assert close(psu.ch3.set_voltage(), 3.3)
        # OVP: level and state through the driver, trip and clear.
        ch.ovp_value(4.0)
        assert close(ch.ovp_value(), 4.0)
        assert ch.ovp_state() == "OFF"
        ch.ovp_state("on")
        assert ch.ovp_state() == "ON"
        assert psu.ask(":OUTP:OVP:QUES? CH1") == "YES"
        assert ch.state() == "OFF"
        out["tripped"] = psu.ask(":VOLT:PROT:TRIP?")
        ch.ovp_value(6.0)
        psu.write(":OUTP:OVP:CLEAR CH1")
        assert psu.ask(":OUTP:OVP:QUES? CH1") == "NO"
        ch.state("on")
        assert close(ch.voltage(), 5.0)
        # OCP: 0.4 A trips at 0.5 A drawn.
        ch.ocp_value(0.4)
        ch.ocp_state("on")
        assert psu.ask(":OUTP:OCP:QUES? CH1") == "YES"
        assert ch.state() == "OFF"
        out["ocp"] = [ch.ocp_value(), ch.ocp_state()]
        # Range errors in the guide's format.
        psu.write(":SOUR3:VOLT 6")
        out["err"] = psu.ask(":SYST:ERR?")
        assert out["err"] == '-222,"Data out of range"', out["err"]
        assert psu.ask(":SYST:ERR?") == '0,"No error"'
        psu.write("*SAV 2")
        psu.write("*RST")
        assert close(ch.ocp_value(), 3.3)
        psu.write("*RCL 2")
        assert close(ch.ocp_value(), 0.4)
        return out
    finally:
        psu.close()


def spd3303x(resource):
    """spd3303x (PyPI) for the Siglent SPD3303X, its USBDevice class with a
    VISA resource string (it opens it with pyvisa-py)."""
    from spd3303x import SPD3303X

    with SPD3303X.usb_device(resource) as dev:
        out = {"idn": dev.query("*IDN?")}
        dev.CH1.set_voltage(5)
        dev.CH1.set_current(0.2)
        assert dev.CH1.get_voltage() == "5.000", dev.CH1.get_voltage()
        assert dev.CH1.get_current() == "0.200"
        dev.CH1.set_output(True)
        assert close(dev.CH1.measure_voltage(), 2.0)
        assert close(dev.CH1.measure_current(), 0.2)
        assert close(dev.CH1.measure_power(), 0.4)
        stat = int(dev.query("SYST:STAT?"), 16)
        assert stat & 0x01 and stat & 0x10, hex(stat)  # CH1 CC, CH1 on
        dev.CH3.set_output(True)
        dev.CH1.set_output(False)
        # Series mode: CH2 follows CH1.
        dev.write("OUTP:TRACK 1")
        dev.CH1.set_voltage(4)
        assert dev.CH2.get_voltage() == "4.000"
        stat = int(dev.query("SYST:STAT?"), 16)
        assert (stat >> 2) & 3 == 3, hex(stat)
        dev.write("OUTP:TRACK 0")
        # Timer groups.
        dev.write("TIMEr:SET CH1,2,3,0.5,2")
        assert dev.query("TIMEr:SET? CH1,2") == "3,0.5,2"
        out["err"] = dev.query("SYST:ERR?")
        assert out["err"] == "0 No Error", out["err"]
        dev.write("CH1:VOLT 40")
        out["range_err"] = dev.query("SYST:ERR?")
        assert out["range_err"].startswith("-222"), out["range_err"]
        out["vers"] = dev.query("SYST:VERS?")
        dev.write("*SAV 1")
        dev.CH1.set_voltage(1)
        dev.write("*RCL 1")
        assert dev.CH1.get_voltage() == "4.000"
        out["status"] = dev.query("SYST:STAT?")
    return out


DRIVERS = {
    "pymeasure-e36312a": pymeasure_e36312a,
    "qcodes-dp832": qcodes_dp832,
    "spd3303x": spd3303x,
}


def main():
    driver, resource = sys.argv[1], sys.argv[2]
    out = DRIVERS[driver](resource)
    print(json.dumps(out, default=str))


main()
