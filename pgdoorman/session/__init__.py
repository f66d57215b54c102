"""One connection's code: the client and server connection classes and the steps they drive.
Connections reach their worker only through the Host protocol; nothing here imports the worker or the app."""
