"""The experiment machinery around the method: the batch driver by verb (``plan``, ``run``, ``collect``,
with ``notebook`` executing one notebook), named studies, the calibration of the synthetic domains, the
results and the paper's claims, and reading run folders."""
