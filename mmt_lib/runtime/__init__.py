"""The runtime under everything: devices and distributed runs, checkpoints and atomic files, reproducible
mode, locks and child processes, paths, progress bars, seeding and compiled kernels. Nothing here knows
about re-ID or the paper; every other part of the library may import it."""
