"""Hyperparameter search on Ray Tune over the train job: the search space (:mod:`.space`), one
trial (:mod:`.trial`), the search state and its best config (:mod:`.search`), the results
(:mod:`.report`) and the search itself (:mod:`.tuner`)."""
