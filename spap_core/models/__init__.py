"""Models as the pipeline sees them: the family adapters (adapters), loading from every source
(loading), the device (device), offloaded layers (offload), config-against-weights checks
(checkpoint) and physical shrinking and saving (shrink).
"""
