"""nfrecon: from brain data to images, and their scores.

:mod:`~nfrecon.decode` (``nf predict``, ``nf decode-ridge``, refinement; sets written by
:mod:`~nfrecon.decoded`), :mod:`~nfrecon.reconstruct` (``nf reconstruct``: SDXL + IP-Adapter
through :mod:`~nfrecon.pipeline`, low-level starts in :mod:`~nfrecon.init_images`, sets in
:mod:`~nfrecon.recon_sets`), :mod:`~nfrecon.export` (``nf export-images``),
:mod:`~nfrecon.metrics`, :mod:`~nfrecon.semantic` and :mod:`~nfrecon.report` (``nf metrics``),
:mod:`~nfrecon.lowlevel_eval` (PixCorr / SSIM tables), :mod:`~nfrecon.tiny` and
:mod:`~nfrecon.single_file` (tiny random models in the real layouts) and :mod:`~nfrecon.demo`
(``nf demo``: the whole pipeline on synthetic data).
"""
