"""Sizes of the public splits (examples), for planning without loading the data: a sweep's
optimizer steps (analysis/gpu_hours.py) and the bench's whole-run scaling (tools/bench.py).

GLUE: the GLUE benchmark's train / dev files (MNLI dev = matched + mismatched). SQuAD 2.0: the
questions of train-v2.0.json / dev-v2.0.json (a run trains on windows of doc_stride, a few % more
than questions on long contexts).
"""

TRAIN = {"mnli": 392_702, "sst2": 67_349, "cola": 8_551, "qqp": 363_846, "qnli": 104_743,
         "rte": 2_490, "mrpc": 3_668, "stsb": 5_749, "squad_v2": 130_319}
DEV = {"mnli": 9_815 + 9_832, "sst2": 872, "cola": 1_043, "qqp": 40_430, "qnli": 5_463, "rte": 277,
       "mrpc": 408, "stsb": 1_500, "squad_v2": 11_873}
