"""``python -m agents ask``: the A2A client command (see :mod:`service.a2a.client`)."""
