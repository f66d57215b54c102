"""The operator's web API on the web listener (the one serving /metrics): JSON views of the SHOW commands
and the console's PAUSE/RESUME/RECONNECT/RELOAD, behind the access rules of `web.ui`. It reads the pooler
through pgdoorman.observe and acts through its `Control`, like the admin console whose row builders it
reuses (admin/show.py). See docs/web-api.md."""
