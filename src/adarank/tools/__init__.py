"""Measuring tools that sit beside the library, not inside a run: the side-by-side benchmark
(``bench``, ``make bench``), operator counts per step (``op_count``), checkpoint save cost
(``checkpoint_cost``), host-device syncs per step (``sync_count``) and the GPU check
(``gpu_check``, ``make gpu-check``)."""
