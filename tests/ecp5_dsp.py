"""The check that a netlist's ECP5 multipliers are ``MULT18X18D`` blocks through their own
input and output registers (hw.dsp), shared by the MacArray and Requant tests."""

import re


def registered_mult18x18d(verilog, output_only=0):
    """Assert every ``MULT18X18D`` instance in ``verilog`` registers A, B and its output on
    CLK0 (no pipeline or C register), always enabled, never reset, signed A and B, except
    exactly ``output_only`` of them which register their output alone (A and B both
    unregistered, ``input_registers=False``); return how many there are in all."""
    insts = re.findall(r"MULT18X18D\s+#\((.*?)\)\s*(\S+)\s*\((.*?)\);", verilog, re.S)
    bare = 0
    for params, _, ports in insts:
        par = dict(re.findall(r"\.(\w+)\(\"?([^\")]*)\"?\)", params))
        inputs = {par["REG_INPUTA_CLK"], par["REG_INPUTB_CLK"]}
        assert inputs in ({"CLK0"}, {"NONE"}), par   # never one input register alone
        bare += inputs == {"NONE"}
        for reg in ("INPUTA", "INPUTB", "OUTPUT"):
            assert par[f"REG_{reg}_CLK"] == ("NONE" if reg != "OUTPUT" and inputs == {"NONE"}
                                             else "CLK0"), par
            assert par[f"REG_{reg}_CE"] == "CE0" and par[f"REG_{reg}_RST"] == "RST0", par
        assert par["REG_PIPELINE_CLK"] == "NONE" and par["REG_INPUTC_CLK"] == "NONE", par
        port = dict(re.findall(r"\.(\w+)\(([^()]*)\)", ports))
        assert port["CLK0"] == "clk" and port["CE0"] == "1'h1" and port["RST0"] == "1'h0"
        assert port["SIGNEDA"] == "1'h1" and port["SIGNEDB"] == "1'h1"
    assert bare == output_only, (bare, output_only)
    return len(insts)
