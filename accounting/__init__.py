"""Accounting: the registry, the billing and compliance ledgers, the monthly close.

Imports only ``storage`` (never ``streams``, ``collectors`` or ``gpuledger``).
"""
