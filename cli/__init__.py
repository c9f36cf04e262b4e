"""The ``nf`` command line (click); one module per command group. Import name: ``nf``."""
