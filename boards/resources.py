"""Resources the board tops add to amaranth-boards platforms that lack a host UART.

The OrangeCrab's USB port is wired to the FPGA itself (the DFU bootloader, or a USB core in
the design); it has no USB-UART bridge. The board top therefore puts the link's UART on the
Feather header's serial pins, where the Feather convention places it: pin ``0`` is RX (into
the FPGA) and pin ``1`` is TX (out of the FPGA). Connect a 3.3 V USB-UART adapter there
(adapter TX -> pin 0, adapter RX -> pin 1, GND -> GND).
"""

from amaranth.build import Attrs
from amaranth_boards.resources import UARTResource

__all__ = ["orangecrab_feather_uart"]


def orangecrab_feather_uart():
    """The ``uart`` resource on the OrangeCrab r0.2 Feather pins 0 (RX) and 1 (TX)."""
    return [UARTResource(0, rx="0", tx="1", conn=("io", 0),
                         attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP"))]
