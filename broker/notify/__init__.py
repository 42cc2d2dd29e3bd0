"""Ring delivery by push: devices, what a push says, and whom a withdrawal must reach.

This package is the sans-I/O half of push. ``devices`` validates what a phone or browser
registers; ``payloads`` turns a ``Ring`` or ``Withdrawn`` into the exact request each push service
expects; ``outcome`` decides what a push service's answer means (sent, retry, prune the device,
give up); ``planner`` decides, for each ring and withdrawal, which devices to push and records it
in the store so that every pushed device gets exactly one withdrawal. The transports that speak
HTTP/2 to APNs, FCM and Web Push services live at the edge (``signaling.push``).
"""
