"""The check that a netlist's ECP5 multipliers are ``MULT18X18D`` blocks through their own
input and output registers (hw.dsp), shared by the MacArray and Requant tests."""

import re


def registered_mult18x18d(verilog):
    """Assert every ``MULT18X18D`` instance in ``verilog`` registers A, B and its output on
    CLK0 (no pipeline or C register), always enabled, never reset, signed A and B; return how
    many there are."""
    insts = re.findall(r"MULT18X18D\s+#\((.*?)\)\s*(\S+)\s*\((.*?)\);", verilog, re.S)
    for params, _, ports in insts:
        par = dict(re.findall(r"\.(\w+)\(\"?([^\")]*)\"?\)", params))
        for reg in ("INPUTA", "INPUTB", "OUTPUT"):
            assert par[f"REG_{reg}_CLK"] == "CLK0", par
            assert par[f"REG_{reg}_CE"] == "CE0" and par[f"REG_{reg}_RST"] == "RST0", par
        assert par["REG_PIPELINE_CLK"] == "NONE" and par["REG_INPUTC_CLK"] == "NONE", par
        port = dict(re.findall(r"\.(\w+)\(([^()]*)\)", ports))
        assert port["CLK0"] == "clk" and port["CE0"] == "1'h1" and port["RST0"] == "1'h0"
        assert port["SIGNEDA"] == "1'h1" and port["SIGNEDB"] == "1'h1"
    return len(insts)
