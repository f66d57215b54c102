"""The shared state below the connections: pools, prepared-statement caches, cancel keys, counters, settings.
Nothing here owns a socket or imports a connection, the worker or the app; the layers above drive it."""
