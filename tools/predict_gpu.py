"""Predict EAT pretraining memory and speed on a GPU without one (fake tensors; nothing is computed).

A thin command line: the program is :mod:`eat.apps.predict_gpu` (``--help`` prints its options).
"""

from eat.apps.predict_gpu import main

if __name__ == "__main__":
    main()
