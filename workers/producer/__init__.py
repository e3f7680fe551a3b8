"""Camera producer: one camera's frames -> Kafka, one process per camera.

``main`` (the process), ``settings``, ``sources`` (camera sources: file, URL, device,
image folder; where a new kind of camera goes) and ``camera`` (the capture loop).
"""
