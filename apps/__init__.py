"""Application wiring on top of every side: the ``fedsecure`` console command and the
demo. The only code (with :mod:`benchmarks`) allowed to import several sides."""
