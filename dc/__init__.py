"""dc: the core library (config, errors, preparation, training, prediction, nlp, utilities).

Nothing here imports a web framework, and nothing happens on import.
"""
