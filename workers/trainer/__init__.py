"""Trainer job: refit one product line's model, gate it, and roll it out to the workers.

``main`` (the command line: train, rollback, list), ``settings``, ``data`` (where frames
come from), ``selection`` (de-duplication, gate split, sampling), ``gate`` (the policy),
``run`` (one run), ``promotion`` (write, verify, move ``current``, notify; rollback) and
``report`` (the outcome, its JSON report and the tables).
"""
