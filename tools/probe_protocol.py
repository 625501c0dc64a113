"""Probe protocol: linear probes over layers x poolings for encoders, their initial weights and log-mel.

A thin command line: the program is :mod:`eat.apps.probe_protocol` (``--help`` prints its options).
"""

from eat.apps.probe_protocol import main

if __name__ == "__main__":
    main()
