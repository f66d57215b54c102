"""Binary upgrade without downtime: the old process (handoff.py) validates and starts the new binary, shares
its listening sockets and hands every idle client over; the new process (receive.py) takes them.

The environment contract between the two is inherit.py, the record framing over the handover socketpair
records.py. serve.py (the composition root) wires the upgrade into the App; app.py imports none of this.
"""
