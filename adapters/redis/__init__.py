"""Redis adapters: the coordination a service of several processes needs.

One module per concern: fair conversation locks (fair_lock.py underneath
locks.py), per-tenant rate limits, the cross-process
live bus, and the session / conversation-state cache. client.py builds the
one client they share; errors.py turns Redis failures into the ports'
CoordinationUnavailable; breaker.py is the circuit breaker they share, so
that a stalled Redis costs one call its timeouts, not every call;
background.py bounds the cleanups that outlive a failed or cancelled call.
"""
