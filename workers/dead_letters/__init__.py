"""Dead-letter tool: list the frames workers could not process, and replay them.

``main`` (the command line), ``settings``, ``tool`` (filters, the listing line, replay).
"""
