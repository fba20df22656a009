"""Devices: the firmware build (build), the framed protocol (protocol) over a pyserial transport
(transport), and the device backends behind one interface — QEMU (qemu) and an RTL simulation (rtl),
child processes with a shared lifecycle (backend), Renode through pyrenode3 (renode) and a flashed
board (board) behind a local relay (backend.Relay) — siblings that give a URL pyserial opens, as a
real board's serial port is one; procguard keeps their processes from outliving the host."""
