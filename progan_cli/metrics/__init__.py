"""The paper's metrics: FID (fid.py) and IS (inception_score.py) on the 2015-12-05 Inception (inception.py,
features.py), SWD (swd.py), their inputs (sources.py) and the in-training callback (in_training.py)."""
