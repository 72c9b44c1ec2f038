"""The SQL the project runs, built with SQLAlchemy Core (bound parameters only), one module per
reader: `training` (the extracts the retraining pipeline pulls; needs pandas, the `train`
group) and `reports` (the production reports' aggregates over the inference log; no pandas, so
the API can serve them). Import the module you need; this package imports neither.
"""
