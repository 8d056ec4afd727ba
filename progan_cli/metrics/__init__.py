"""The paper's metrics and their successors: FID (fid.py), IS (inception_score.py), KID (kid.py) and precision/
recall (precision_recall.py) on the 2015-12-05 Inception (inception.py, features.py), SWD (swd.py), MS-SSIM
(msssim.py); their inputs (sources.py); scoring generators by metric name (evaluate.py) for `progan eval` and
the in-training callback (in_training.py)."""
