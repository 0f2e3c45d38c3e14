"""The Tidings benchmark: Tidings against other Python real-time designs, on loopback.

Run ``python -m bench`` (``--quick``, ``--smoke``); see bench/README.md.
"""
