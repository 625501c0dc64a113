"""The whole toolkit end to end on synthetic audio, with the evidence that pretraining learns something.

    python tools/demo.py --out outputs/demo [--seed 0] [--quick] [--steps N] [--device auto|cpu|cuda]
        [--set KEY=VALUE ...] [--pooling mean|cls]

The stages and options are described in ``eat/apps/demo.py`` (``--help`` prints them); ``make demo`` runs this.
"""

from eat.apps.demo import main

if __name__ == "__main__":
    main()
