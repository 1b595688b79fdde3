"""Long-running platform services (device catalog, historian) and what they share.

Services talk to each other and to devices only over MQTT and REST; none imports another's state.
"""
