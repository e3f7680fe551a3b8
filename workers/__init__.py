"""The processes: one package per process, each run as ``python -m workers.<process>``.

Every process package has ``main.py`` (thin: settings -> wiring -> run, through the shared
:mod:`workers.startup`), ``settings.py`` and the process's own logic. The map:
docs/architecture.md.
"""
