"""Developer tools, never shipped in an image.

The local stack, the demo, the synthetic product line and the settings catalogue behind
``docs/configuration.md``.
"""
