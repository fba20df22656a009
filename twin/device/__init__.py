"""Devices: the firmware build (build), the framed protocol (protocol) over a pyserial transport
(transport), and the device backends behind one interface — QEMU (qemu) and an RTL simulation (rtl),
siblings that give a URL pyserial opens, as a real board's serial port is one; procguard keeps their
processes from outliving the host."""
